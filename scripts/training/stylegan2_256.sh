#!/usr/bin/env bash
# StyleGAN2 at 256 x 256 (the LSUN GANgealing generators' size), rosinality's defaults:
# 8 GPUs x batch 4, channel multiplier 2, R1 10 every 16, path length 2 every 4.
# Then: python train.py --ckpt results/stylegan2_256/checkpoints/0800000.pt --load_G_only ...
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-8} train_stylegan2.py --exp-name stylegan2_256 \
    --size 256 --channel_multiplier 2 --batch 4 --iter 800000 --resume \
    "$@"
