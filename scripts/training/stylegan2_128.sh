#!/usr/bin/env bash
# StyleGAN2 at 128 x 128 (the CelebA GANgealing generator's size): standard widths,
# 4 GPUs x batch 8, adaptive augmentation.
#   python prepare_data.py --path my_images/ --out data/mine --size 128
#   bash scripts/training/stylegan2_128.sh --real_data_path data/mine
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-4} train_stylegan2.py --exp-name stylegan2_128 \
    --size 128 --channel_multiplier 2 --batch 8 --iter 400000 --augment --resume \
    "$@"
