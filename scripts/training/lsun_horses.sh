#!/usr/bin/env bash
# LSUN horses, 4 clusters with flips, LPIPS loss.
# Published configuration: 8 GPUs x batch 5 (keep the total batch of 40 with fewer GPUs
# by raising --batch). Extra arguments are passed on, e.g. --real_data_path DIR for
# visualising real images while training.
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-8} train.py \
    --exp-name lsun_horses --ckpt horse --load_G_only --padding_mode reflection --tv_weight 2500 \
    --vis_every 5000 --ckpt_every 50000 --iter 1500000 --loss_fn lpips \
    --num_heads 4 --flips --ndirs 5 --inject 6 --sample_from_full_res \
    "$@"
