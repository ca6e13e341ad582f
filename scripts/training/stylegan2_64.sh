#!/usr/bin/env bash
# StyleGAN2 at 64 x 64: a small-GPU (or patient CPU) recipe, 128 channels, adaptive
# augmentation for datasets of a few thousand images.
#   python prepare_data.py --path my_images/ --out data/mine --size 64
#   NPROC=1 bash scripts/training/stylegan2_64.sh --real_data_path data/mine
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-1} train_stylegan2.py --exp-name stylegan2_64 \
    --size 64 --latent 256 --n_mlp 8 --channel_max 128 --batch 32 --iter 200000 --augment --resume \
    "$@"
