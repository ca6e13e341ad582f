#!/usr/bin/env bash
# The cluster classifier of the LSUN cars model (4 clusters with flips, LPIPS loss):
# run after scripts/training/lsun_cars.sh. CKPT is the trained clustering checkpoint
# (default: the final one of that recipe). Extra arguments are passed on.
cd "$(dirname "$0")/../.."
torchrun --nproc_per_node=${NPROC:-8} train_cluster_classifier.py \
    --exp-name lsun_cars_cluster_classifier --ckpt "${CKPT:-results/lsun_cars/checkpoints/1500000.pt}" \
    --padding_mode reflection --vis_every 5000 --ckpt_every 50000 --iter 55000 --period 50000 --loss_fn lpips \
    --num_heads 4 --flips --ndirs 5 --inject 6 --sample_from_full_res \
    "$@"
