#!/usr/bin/env bash
# LSUN dogs, LPIPS loss.
# Published configuration: 8 GPUs x batch 5 (keep the total batch of 40 with fewer GPUs
# by raising --batch). Extra arguments are passed on, e.g. --real_data_path DIR for
# visualising real images while training.
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-8} train.py \
    --exp-name lsun_dogs --ckpt dog --load_G_only --padding_mode border \
    --vis_every 5000 --ckpt_every 50000 --iter 1500000 --tv_weight 2500 --loss_fn lpips \
    "$@"
