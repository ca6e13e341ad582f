"""StyleGAN2 trainer speed: seconds per iteration of train_stylegan2.py.

    python -m benchmarks.bench_stylegan2_train                      # CPU (and CUDA when present)
    python -m benchmarks.bench_stylegan2_train --devices cpu --threads 1 --configs 32-narrow 64-narrow

An iteration is what train_stylegan2.py does (training.gan_trainer.train_iteration):
a discriminator step, R1 every 16 iterations, a generator step, path length
every 4 iterations, the EMA update. ``--iters`` (a multiple of 16) are timed
after 2 warm-up iterations, so the regularisers count at their real share.
Real images are random (loading is not measured). Prints a markdown table.
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.gan_trainer import (Networks, RunningState, build_networks, lazy_adam,  # noqa: E402
                                train_iteration)

# name -> (size, latent, n_mlp, channel_max, batch)
CONFIGS = {
    '32-narrow': (32, 128, 4, 32, 8),    # the shipped synthetic-world model (scripts/training/stylegan2_32.sh)
    '64-narrow': (64, 128, 4, 32, 8),
    '64-128ch': (64, 256, 8, 128, 16),
    '64-standard': (64, 512, 8, 512, 16),
}


def options(size, latent, n_mlp, channel_max, batch):
    return SimpleNamespace(size=size, latent=latent, n_mlp=n_mlp, channel_multiplier=2, channel_max=channel_max,
                           num_fp16_res=0, batch=batch, lr=0.002, r1=10.0, path_regularize=2.0,
                           path_batch_shrink=2, d_reg_every=16, g_reg_every=4, mixing=0.9, augment=False,
                           augment_p=0.0, ada_target=0.6, ada_length=500000, ada_every=256)


def seconds_per_iteration(config, device, iters):
    opt = options(*config)
    torch.manual_seed(0)
    g, d, g_ema = build_networks(opt, device)
    nets = Networks(g, d, g, d, g_ema, lazy_adam(g, opt.lr, opt.g_reg_every), lazy_adam(d, opt.lr, opt.d_reg_every))
    state = RunningState(opt, device)
    real = torch.rand(opt.batch, 3, opt.size, opt.size, device=device) * 2 - 1
    for i in (1, 2):
        train_iteration(opt, nets, state, real, i)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(1, iters + 1):
        train_iteration(opt, nets, state, real, i)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--devices', nargs='+', default=None, help='cpu and/or cuda (default: cpu, and cuda if present)')
    parser.add_argument('--configs', nargs='+', default=['32-narrow', '64-narrow', '64-128ch'], choices=list(CONFIGS))
    parser.add_argument('--iters', type=int, default=16, help='timed iterations (a multiple of 16)')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.devices or (['cpu', 'cuda'] if torch.cuda.is_available() else ['cpu'])
    print('| config (size, W, mapping, channel_max, batch) | device | s / iteration | images / s |')
    print('|---|---|---|---|')
    for name in args.configs:
        for device in devices:
            seconds = seconds_per_iteration(CONFIGS[name], torch.device(device), args.iters)
            where = f'cpu ({args.threads} thread{"s" if args.threads > 1 else ""})' if device == 'cpu' else device
            print(f'| {name} {CONFIGS[name]} | {where} | {seconds:.3f} | {CONFIGS[name][4] / seconds:.1f} |',
                  flush=True)


if __name__ == '__main__':
    main()
