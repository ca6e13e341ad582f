#!/usr/bin/env bash
# StyleGAN2 at 32 x 32 on a CPU: the shipped synthetic-world generator's recipe
# (narrow: 32 channels, W of 128, 4 mapping layers; ~2.4 it/s on one core).
# Run it again to continue (--resume); stop it any time (SIGTERM/Ctrl-C saves).
#   python prepare_data.py --synthetic --seed 0 --out data/synthetic32 --size 32,64 --max_images 20000
#   bash scripts/training/stylegan2_32.sh [--real_data_path data/synthetic32] [more flags]
cd "$(dirname "$0")/../.."
python train_stylegan2.py --exp-name stylegan2_synthetic32 --real_data_path data/synthetic32 \
    --size 32 --latent 128 --n_mlp 4 --channel_max 32 --batch 8 --iter 200000 \
    --n_sample 64 --vis_every 500 --ckpt_every 500 --log_every 50 --num_workers 0 --resume \
    "$@"
