"""Spatial transformer throughput: forward and forward+backward images per second.

    python -m benchmarks.bench_stn                      # CPU, and CUDA when present
    python -m benchmarks.bench_stn --batches 5 --reps 2 --devices cpu

Prints a markdown table. The default configuration is the released models'
(similarity then flow, flow_size 128, 256-pixel inputs, channel multiplier 0.5).
"""
import argparse
import time

import torch

from models import get_stn


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--transforms', nargs='+', default=['similarity', 'flow'])
    parser.add_argument('--flow_size', type=int, default=128)
    parser.add_argument('--supersize', type=int, default=256)
    parser.add_argument('--channel_multiplier', type=float, default=0.5)
    parser.add_argument('--num_heads', type=int, default=1)
    parser.add_argument('--batches', type=int, nargs='+', default=[5, 40])
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions per measurement')
    parser.add_argument('--cpu_reps_large', type=int, default=2,
                        help='repetitions on the CPU for batches above 8 (they are slow)')
    parser.add_argument('--devices', nargs='+', default=None,
                        help="devices to measure (default: cpu, plus cuda when available)")
    return parser.parse_args(argv)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def images_per_second(step, batch, reps, device):
    """Run ``step`` once to warm up, then ``reps`` times; return batch * reps / seconds."""
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        step()
    synchronize(device)
    return batch * reps / (time.perf_counter() - start)


def measure(stn, batch, reps, device, supersize):
    images = torch.rand(batch, 3, supersize, supersize, device=device) * 2 - 1

    def forward():
        with torch.no_grad():
            stn(images)

    def forward_backward():
        stn.zero_grad(set_to_none=True)
        out, flow = stn(images, return_flow=True)
        (out.square().mean() + flow.square().mean()).backward()

    return (images_per_second(forward, batch, reps, device),
            images_per_second(forward_backward, batch, reps, device))


def main(argv=None):
    args = parse_args(argv)
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    rows = []
    for name in devices:
        device = torch.device(name)
        torch.manual_seed(0)
        stn = get_stn(args.transforms, flow_size=args.flow_size, supersize=args.supersize,
                      channel_multiplier=args.channel_multiplier,
                      num_heads=args.num_heads).to(device)
        for batch in args.batches:
            reps = args.cpu_reps_large if device.type == 'cpu' and batch > 8 else args.reps
            fwd, fwd_bwd = measure(stn, batch, reps, device, args.supersize)
            rows.append((name, batch, reps, fwd, fwd_bwd))
            print(f'# {name} batch {batch}: {fwd:.1f} / {fwd_bwd:.1f} images/s', flush=True)
    threads = torch.get_num_threads()
    print(f'\nSTN {args.transforms}, flow_size {args.flow_size}, input {args.supersize}px, '
          f'channel_multiplier {args.channel_multiplier}, heads {args.num_heads}, '
          f'torch {torch.__version__}, {threads} CPU threads\n')
    print('| device | batch | reps | forward (img/s) | forward+backward (img/s) |')
    print('|---|---|---|---|---|')
    for name, batch, reps, fwd, fwd_bwd in rows:
        print(f'| {name} | {batch} | {reps} | {fwd:.1f} | {fwd_bwd:.1f} |')


if __name__ == '__main__':
    main()
