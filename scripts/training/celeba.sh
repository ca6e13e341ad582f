#!/usr/bin/env bash
# In-the-wild CelebA (128x128 generator), LPIPS loss, 512 PCA directions.
# Published configuration: 8 GPUs x batch 5 (keep the total batch of 40 with fewer GPUs
# by raising --batch). Extra arguments are passed on, e.g. --real_data_path DIR for
# visualising real images while training.
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-8} train.py \
    --exp-name in_the_wild_celeba --ckpt celeba --load_G_only --padding_mode border --gen_size 128 \
    --vis_every 5000 --ckpt_every 50000 --iter 1500000 --tv_weight 2500 --ndirs 512 --inject 6 --loss_fn lpips \
    "$@"
