"""GANgealing training speed: seconds per optimiser step and peak memory.

    python -m benchmarks.bench_train                          # CPU, and CUDA when present
    python -m benchmarks.bench_train --devices cpu --threads 2 --configs synthetic sg2-64
    python -m benchmarks.bench_train --loss_fn lpips --perceptual_weights vgg16-397923af.pth

A step is what train.py does per iteration: draw pairs from the generator,
warp with the STN, the loss, backward, Adam on the STN and the target, and the
EMA update (training.step.training_step and accumulate on models from
training.building.build_models). The StyleGAN2 configurations use a random-weight
generator of the published shape (dim_latent 512, n_mlp 8, channel multiplier
2) and the published STN (channel multiplier 0.5), psi = 0 (gradients reach
the target through the generator). The synthetic configuration is the CPU demo
(``python train.py --exp-name demo``).

Each (configuration, device) is measured in a fresh process, so the CPU peak
(``ru_maxrss``) belongs to that configuration alone. Memory columns: CPU, the
process's peak resident set and how much it grew during the timed steps; CUDA,
``torch.cuda.max_memory_allocated`` during the steps. Prints a markdown table.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (training flags, short description); every StyleGAN2 one is (gen_size, flow_size, batch).
STYLEGAN2 = ['--generator', 'stylegan2', '--dim_latent', '512', '--n_mlp', '8', '--gen_channel_multiplier', '2',
             '--dataset_mode', 'lmdb', '--inject', '5', '--stn_channel_multiplier', '0.5']
CONFIGS = {
    'synthetic': ([], 'synthetic demo defaults'),
    'sg2-64': (STYLEGAN2 + ['--gen_size', '64', '--real_size', '64', '--flow_size', '64', '--batch', '5'],
               'StyleGAN2 64, flow 64, batch 5'),
    'sg2-128': (STYLEGAN2 + ['--gen_size', '128', '--real_size', '128', '--flow_size', '128', '--batch', '5'],
                'StyleGAN2 128, flow 128, batch 5'),
    'sg2-256': (STYLEGAN2 + ['--gen_size', '256', '--real_size', '256', '--flow_size', '128', '--batch', '5'],
                'StyleGAN2 256, flow 128, batch 5'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--devices', nargs='+', default=None,
                        help='devices to measure (default: cpu, plus cuda when available)')
    parser.add_argument('--loss_fn', default='laplacian',
                        help='perceptual loss of the StyleGAN2 configurations (lpips and vgg_ssl need weights)')
    parser.add_argument('--perceptual_weights', default=None, help='VGG16 weights file for lpips / vgg_ssl')
    parser.add_argument('--iters', type=int, default=None,
                        help='timed steps per measurement (default: 2 on the CPU, 20 on CUDA)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    parser.add_argument('--single', default=None, help=argparse.SUPPRESS)  # internal: one measurement
    return parser.parse_args(argv)


def training_flags(name, args, device):
    """train.py's flags for configuration ``name`` on ``device``."""
    flags, _ = CONFIGS[name]
    flags = ['--exp-name', 'bench', '--device', device, '--n_pca', '2000', *flags]
    if name != 'synthetic':
        flags += ['--loss_fn', args.loss_fn]
        if args.perceptual_weights:
            flags += ['--perceptual_weights', args.perceptual_weights]
    return flags


def _synchronize(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(name, args, device_name):
    """Build the models for one configuration and time ``iters`` training steps.

    Returns a dict: seconds per step, images per second, peak memory (MiB) and
    the run's settings.
    """
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from training.building import build_models, build_optimizers, initialise_target
    from training.step import EMA_DECAY, accumulate, training_step
    from models.perceptual import PERCEPTUAL_LOSSES
    from utils.distributed import seed_everything
    from utils.options import parse_training_options

    opt = parse_training_options(training_flags(name, args, device_name), save=False)
    device = torch.device(device_name)
    seed_everything(0)
    generator, stn, t_ema, ll = build_models(opt, device)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    initialise_target(opt, generator, ll, loss_fn, device)
    t_optim, ll_optim, _, _ = build_optimizers(opt, stn, ll)
    stn.train()

    def step():
        terms = training_step(opt, generator, stn, ll, loss_fn, psi=0.0)
        t_optim.zero_grad(set_to_none=True)
        ll_optim.zero_grad(set_to_none=True)
        terms.total.backward()
        t_optim.step()
        ll_optim.step()
        accumulate(t_ema, stn, EMA_DECAY)
        return terms.total.detach()

    iters = args.iters or (20 if device.type == 'cuda' else 2)
    for _ in range(args.warmup):
        step()
    _synchronize(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    losses = [step() for _ in range(iters)]
    _synchronize(device)
    seconds = (time.perf_counter() - start) / iters
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {'config': name, 'device': device_name, 'iters': iters, 'seconds_per_step': seconds,
              'images_per_second': opt.batch / seconds, 'batch': opt.batch, 'gen_size': opt.gen_size,
              'flow_size': opt.flow_size, 'loss_fn': opt.loss_fn, 'threads': torch.get_num_threads(),
              'finite': bool(torch.isfinite(torch.stack(losses)).all())}
    if device.type == 'cuda':
        result['memory_mib'] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        result['memory_growth_mib'] = None
    else:
        result['memory_mib'] = rss_after / 1024
        result['memory_growth_mib'] = (rss_after - rss_before) / 1024
    return result


def run_in_fresh_process(name, args, device):
    """``measure`` in a child process (clean peak-memory counters); the result dict, or an error string."""
    command = [sys.executable, '-m', 'benchmarks.bench_train', '--single', f'{name}@{device}',
               '--loss_fn', args.loss_fn, '--warmup', str(args.warmup)]
    for flag, value in (('--iters', args.iters), ('--threads', args.threads),
                        ('--perceptual_weights', args.perceptual_weights)):
        if value:
            command += [flag, str(value)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f'exit status {proc.returncode}'


def format_table(rows):
    lines = ['| configuration | device | gen / flow / batch | loss | threads | steps | s / step | images / s '
             '| peak memory (MiB) | growth in steps (MiB) |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for name, device, row in rows:
        if isinstance(row, str):
            lines.append(f'| {name} | {device} | failed: {row} | | | | | | | |')
            continue
        growth = '' if row['memory_growth_mib'] is None else f"{row['memory_growth_mib']:.0f}"
        lines.append(f"| {CONFIGS[name][1]} | {device} | {row['gen_size']} / {row['flow_size']} / {row['batch']} "
                     f"| {row['loss_fn']} | {row['threads'] if device == 'cpu' else ''} | {row['iters']} "
                     f"| {row['seconds_per_step']:.3f} | {row['images_per_second']:.2f} "
                     f"| {row['memory_mib']:.0f} | {growth} |")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.single:
        name, device = args.single.split('@')
        print('RESULT ' + json.dumps(measure(name, args, device)), flush=True)
        return
    import torch
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    rows = []
    for device in devices:
        for name in args.configs:
            row = run_in_fresh_process(name, args, device)
            rows.append((name, device, row))
            summary = row if isinstance(row, str) else f"{row['seconds_per_step']:.3f} s/step"
            print(f'# {name} on {device}: {summary}', flush=True)
    print(f'\ntorch {torch.__version__}; StyleGAN2 loss {args.loss_fn}; random-weight generators; '
          f'warm-up {args.warmup} step(s)\n')
    print(format_table(rows))


if __name__ == '__main__':
    main()
