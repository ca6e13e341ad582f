"""GANgealing training speed: seconds per optimiser step and peak memory.

    python -m benchmarks.bench_train                          # CPU, and CUDA when present
    python -m benchmarks.bench_train --devices cpu --threads 2 --configs synthetic sg2-64
    python -m benchmarks.bench_train --loss_fn lpips --perceptual_weights vgg16-397923af.pth
    python -m benchmarks.bench_train --official ../gangealing --configs sg2-64 --threads 2   # beside the original
    python -m benchmarks.bench_train --utilisation --configs sg2-64 --precision fp32 bf16   # against the machine
    python -m benchmarks.bench_train --configs sg2-64 --layout nchw channels_last --precision fp32 bf16   # a switch

A step is what train.py does per iteration: draw pairs from the generator,
warp with the STN, the loss, backward, Adam on the STN and the target, and the
EMA update (training.step.training_step and training.ema.accumulate on models from
training.building.build_models). The StyleGAN2 configurations use a random-weight
generator of the published shape (dim_latent 512, n_mlp 8, channel multiplier
2) and the published STN (channel multiplier 0.5), psi = 0 (gradients reach
the target through the generator). The synthetic configuration is the CPU demo
(``python train.py --exp-name demo``).

Each (configuration, device) is measured in a fresh process, so the CPU peak
(``ru_maxrss``) belongs to that configuration alone. Memory columns: CPU, the
process's peak resident set and how much it grew during the timed steps; CUDA,
``torch.cuda.max_memory_allocated`` during the steps. Prints a markdown table.

With ``--official PATH`` (a checkout of the original GANgealing code) each
StyleGAN2 configuration is also run by the original's own training-step
functions (``benchmarks/official.py`` says how it is imported and which
stand-ins a CPU needs), in the same process and on the same weights: both are
built, warmed up, then timed in alternating rounds (ours, theirs, theirs,
ours, ...) so that the load of a shared machine falls on both alike; the table
gives each one's median seconds per step and the ratio. Peak memory comes
from two fresh child processes that both build both implementations, free
the other one, and run the steps of one: CPU, the peak resident set's growth
over the steps; CUDA, ``max_memory_allocated``. Without
``--perceptual_weights`` the VGG16 trunk of lpips / vgg_ssl is a random-weight
file both read (the aim is timing).

With ``--utilisation`` it measures each configuration against the machine's
limit instead: the step's floating-point operations, counted by
``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward and
backward; it counts matrix products and convolutions, the operations a peak
rate is quoted for), the seconds per step, and the rate that makes as a
fraction of this machine's matrix-multiply peak at the same precision,
measured by the benchmark itself (square products of ``--peak_size``, float32
or bfloat16, best of three). Steps and peaks are timed in alternating rounds in
one process (peak fp32, step fp32, peak bf16, step bf16, then reversed), so the
load of a shared machine falls on both; the fraction is the median over rounds.
Then one step of each precision is profiled (``torch.profiler``): the operators
taking the most time.
"""
import argparse
import itertools
import json
import os
import resource
import subprocess
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

from utils.precision import PRECISIONS, resolve_precision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (training flags, short description); every StyleGAN2 one is (gen_size, flow_size, batch).
STYLEGAN2 = ['--generator', 'stylegan2', '--dim_latent', '512', '--n_mlp', '8', '--gen_channel_multiplier', '2',
             '--dataset_mode', 'lmdb', '--inject', '5', '--stn_channel_multiplier', '0.5']
CONFIGS = {
    'synthetic': ([], 'synthetic demo defaults'),
    # scripts/training/synthetic_photo.sh's flags (its schedule aside: a step is a step)
    'synthetic-photo': (['--synthetic_world', 'photo', '--change_weighting', '0.9', '--flips',
                         '--change_weighting_target', '--transform', 'similarity', 'similarity',
                         '--stn_channel_multiplier', '0.25', '--stn_max_channels', '64'], 'synthetic photo recipe'),
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
    parser.add_argument('--official', default=None, metavar='PATH',
                        help='checkout of the original GANgealing code: time its training step beside ours '
                             '(StyleGAN2 configurations; default loss lpips)')
    parser.add_argument('--precision', nargs='+', default=['auto'], choices=PRECISIONS,
                        help="train.py's --precision for our steps (default auto, as train.py); two values "
                             '(fp32 bf16) time both in alternating rounds in one process (with --official: each '
                             "beside the original in the same rounds; memory is measured for the first)")
    parser.add_argument('--modconv', nargs='+', default=['scaled'], choices=['scaled', 'grouped'],
                        help="the generator's modulated convolution: scaled activations (ours) or grouped "
                             'per-sample weights (ModulatedConv2d.fused, the official form); two values time '
                             'both in alternating rounds')
    parser.add_argument('--layout', nargs='+', default=['default'], choices=['default', 'nchw', 'channels_last'],
                        help="the generator's and the VGG's activation layout on a CPU (Generator.channels_last): "
                             'default leaves the models as they are; two values time both in alternating rounds')
    parser.add_argument('--compile', nargs='+', default=['off'], choices=['off', 'on'],
                        help="train.py's --compile for our steps; two values (off on) time both in alternating "
                             'rounds in one process (the warm-up, which compiles, is reported apart)')
    parser.add_argument('--no_memory', dest='memory', action='store_false',
                        help='with --official: skip the two child processes that measure peak memory')
    parser.add_argument('--rounds', type=int, default=3,
                        help='with --official: alternating timed rounds of --iters steps each')
    parser.add_argument('--utilisation', action='store_true',
                        help="count each step's FLOPs, time it against this machine's measured matmul peak at the "
                             'same precision, and profile it (see above); one row per --precision value')
    parser.add_argument('--peak_size', type=int, default=None,
                        help='matrix side of the peak measurement (default 2048 on the CPU, 8192 on CUDA)')
    parser.add_argument('--top', type=int, default=12, help='with --utilisation: operators in each profile')
    parser.add_argument('--single', default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.official and args.loss_fn == 'laplacian' and '--loss_fn' not in (argv or sys.argv[1:]):
        args.loss_fn = 'lpips'
    if args.official:
        args.configs = [name for name in args.configs if not name.startswith('synthetic')]
    return args


def ensure_perceptual_weights(args):
    """lpips / vgg_ssl without --perceptual_weights: a random-weight VGG16 file, made once."""
    if args.loss_fn in ('lpips', 'vgg_ssl') and not args.perceptual_weights:
        from benchmarks.official import write_random_vgg16
        path = os.path.join(tempfile.gettempdir(), 'gangealing_bench_random_vgg16.pt')
        if not os.path.exists(path):
            write_random_vgg16(path + '.part')
            os.replace(path + '.part', path)
        args.perceptual_weights = path


def training_flags(name, args, device, precision=None, compile_=None):
    """train.py's flags for configuration ``name`` on ``device`` (``precision``, ``compile_``: default the
    first --precision, --compile)."""
    flags, _ = CONFIGS[name]
    flags = ['--exp-name', 'bench', '--device', device, '--n_pca', '2000', '--precision',
             precision or args.precision[0], *flags]
    if (compile_ or args.compile[0]) == 'on':
        flags.append('--compile')
    if not name.startswith('synthetic'):
        flags += ['--loss_fn', args.loss_fn]
        if args.perceptual_weights:
            flags += ['--perceptual_weights', args.perceptual_weights]
    return flags


def _synchronize(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def build_ours(name, args, device_name, precision=None, compile_=None):
    """Our models for configuration ``name``; returns (opt, step, parts): ``step()`` runs one
    training iteration (as train.py) and returns the detached total loss."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from training.building import build_models, build_optimizers, initialise_target
    from training.ema import EMA_DECAY, accumulate
    from training.step import step_modules, training_step
    from models.perceptual import PERCEPTUAL_LOSSES
    from utils.distributed import seed_everything
    from options import parse_training_options

    opt = parse_training_options(training_flags(name, args, device_name, precision, compile_), save=False)
    device = torch.device(device_name)
    seed_everything(0)
    generator, stn, t_ema, ll = build_models(opt, device)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    initialise_target(opt, generator, ll, loss_fn, device)
    t_optim, ll_optim, _, _ = build_optimizers(opt, stn, ll)
    stn.train()
    step_generator, step_stn, step_loss_fn = step_modules(opt, generator, stn, loss_fn)

    def step():
        terms = training_step(opt, step_generator, step_stn, ll, step_loss_fn, psi=0.0)
        t_optim.zero_grad(set_to_none=True)
        ll_optim.zero_grad(set_to_none=True)
        terms.total.backward()
        t_optim.step()
        ll_optim.step()
        accumulate(t_ema, stn, EMA_DECAY)
        return terms.total.detach()
    parts = SimpleNamespace(generator=generator, stn=stn, t_ema=t_ema, ll=ll, loss_fn=loss_fn,
                            t_optim=t_optim, ll_optim=ll_optim, device=device)
    return opt, step, parts


def build_theirs(args, opt, ours):
    """The original's training step on our models' weights: ``step()`` as ``build_ours``'s."""
    from benchmarks.official import build_official_training, load_official, official_training_step
    official = load_official(args.official)
    parts = build_official_training(official, opt, ours.generator, ours.stn, ours.ll, args.perceptual_weights,
                                    ours.device)
    return parts, lambda: official_training_step(official, opt, parts, psi=0.0)


def measure(name, args, device_name):
    """Build the models for one configuration and time ``iters`` training steps.

    Returns a dict: seconds per step, images per second, peak memory (MiB) and
    the run's settings.
    """
    import torch
    opt, step, _ = build_ours(name, args, device_name)
    device = torch.device(device_name)
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


def _current_rss_kib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024


def measure_memory(name, args, device_name, which):
    """Peak memory of ``which`` ('ours' or 'original') over ``iters`` steps after a warm-up; both
    implementations are built first (the original takes our weights), then the other one is freed."""
    import gc
    import torch
    device = torch.device(device_name)
    opt, our_step, ours = build_ours(name, args, device_name)
    theirs, their_step = build_theirs(args, opt, ours)
    if which == 'ours':
        del theirs, their_step
        step = our_step
    else:
        del ours, our_step
        step = their_step
    gc.collect()
    step()
    _synchronize(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    before = _current_rss_kib()
    for _ in range(args.iters or 1):
        step()
    _synchronize(device)
    if device.type == 'cuda':
        return {'peak_mib': torch.cuda.max_memory_allocated(device) / 2 ** 20}
    return {'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            'growth_mib': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def compare(name, args, device_name):
    """Ours and the original's step on the same weights, timed in alternating rounds.

    Returns a dict with each one's per-round seconds per step, medians and the
    first losses (same seed, same weights: the two should start alike).
    """
    import torch
    device = torch.device(device_name)
    opt, our_step, ours = build_ours(name, args, device_name)
    _, their_step = build_theirs(args, opt, ours)
    steps = {'ours': our_step, 'original': their_step}
    for precision in args.precision[1:]:  # the same seed, so the same weights
        steps[f'ours {resolve_precision(precision, device)}'] = build_ours(name, args, device_name, precision)[1]
    first = {}
    for key, step in steps.items():  # warm-up; the same seed first, so both draw the same latents and noise
        torch.manual_seed(1)
        first[key] = float(step())
    iters = args.iters or (20 if device.type == 'cuda' else 1)
    seconds = {key: [] for key in steps}
    for round_index in range(args.rounds):
        order = list(steps) if round_index % 2 == 0 else list(steps)[::-1]
        for key in order:
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                steps[key]()
            _synchronize(device)
            seconds[key].append((time.perf_counter() - start) / iters)
        print(f'#   round {round_index + 1}: ' + ', '.join(f'{key} {seconds[key][-1]:.3f} s' for key in steps),
              flush=True)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    return {'config': name, 'device': device_name, 'iters': iters, 'rounds': args.rounds, 'seconds': seconds,
            'median': median, 'ratio': median['original'] / median['ours'], 'first_loss': first,
            'gen_size': opt.gen_size, 'flow_size': opt.flow_size, 'batch': opt.batch, 'loss_fn': opt.loss_fn,
            'threads': torch.get_num_threads(), 'precision': resolve_precision(opt.precision, device)}


def run_in_fresh_process(name, args, device, which=None):
    """``measure`` (or, with ``which``, ``measure_memory``) in a child process, for clean
    peak-memory counters; the result dict, or an error string."""
    single = f'{name}@{device}' + (f'@{which}' if which else '')
    command = [sys.executable, '-m', 'benchmarks.bench_train', '--single', single,
               '--loss_fn', args.loss_fn, '--warmup', str(args.warmup), '--precision', args.precision[0],
               '--compile', args.compile[0]]
    for flag, value in (('--iters', args.iters), ('--threads', args.threads),
                        ('--perceptual_weights', args.perceptual_weights), ('--official', args.official)):
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


def compare_variants(name, args, device_name):
    """Our step for every (precision, modulated convolution, compile, layout) of ``args``, same seed and weights,
    timed in alternating rounds; returns {label: (median seconds per step, first two losses, seconds of
    the two warm-up steps)}."""
    import torch
    from models.layers import ModulatedConv2d
    device = torch.device(device_name)
    steps, losses = {}, {}
    warmup = {}
    for precision, modconv, compile_, layout in itertools.product(args.precision, args.modconv, args.compile,
                                                                  args.layout):
        label = f'{precision}, {modconv}, compile {compile_}' + (f', {layout}' if len(args.layout) > 1 else '')
        _, steps[label], parts = build_ours(name, args, device_name, precision, compile_)
        for module in parts.generator.modules():
            if isinstance(module, ModulatedConv2d):
                module.fused = modconv == 'grouped'
        set_layout(parts, layout)
        torch.manual_seed(1)
        start = time.perf_counter()
        losses[label] = [float(steps[label]()) for _ in range(2)]  # warm-up, the same draws for each
        warmup[label] = time.perf_counter() - start
    labels = list(steps)
    iters = args.iters or (20 if device.type == 'cuda' else 1)
    seconds = {label: [] for label in labels}
    for round_index in range(args.rounds):
        for label in (labels if round_index % 2 == 0 else labels[::-1]):
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                steps[label]()
            _synchronize(device)
            seconds[label].append((time.perf_counter() - start) / iters)
        print('#   round ' + ', '.join(f'{label}: {seconds[label][-1]:.3f} s' for label in labels), flush=True)
    return {label: (statistics.median(seconds[label]), losses[label], warmup[label]) for label in labels}


def set_layout(parts, layout):
    """The generator's and the perceptual network's activation layout ('default': as built)."""
    if layout == 'default':
        return
    for module in (parts.generator, parts.loss_fn, *parts.loss_fn.modules()):
        if hasattr(module, 'channels_last'):
            module.channels_last = layout == 'channels_last'


def _memory_cell(result):
    if result is None:
        return 'not measured'
    if isinstance(result, str):
        return f'failed: {result}'
    if 'growth_mib' in result:
        return f"{result['peak_mib']:.0f} (+{result['growth_mib']:.0f})"
    return f"{result['peak_mib']:.0f}"


def format_comparison(rows):
    """Markdown table of ``compare`` results with the two implementations' memory."""
    lines = ['| configuration | device | loss | our precision | threads | rounds x steps | ours s / step '
             '| original s / step | speed-up | ours peak MiB (+growth) | original peak MiB (+growth) |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for name, device, row, memory in rows:
        if isinstance(row, str):
            lines.append(f'| {name} | {device} | failed: {row} | | | | | | | | |')
            continue
        ours_keys = [key for key in row['median'] if key.startswith('ours')]
        for key in ours_keys:
            precision = row['precision'] if key == 'ours' else key.split(' ', 1)[1]
            ours_memory = _memory_cell(memory['ours']) if key == 'ours' else ''
            lines.append(f"| {CONFIGS[name][1]} | {device} | {row['loss_fn']} | {precision} "
                         f"| {row['threads'] if device == 'cpu' else ''} "
                         f"| {row['rounds']} x {row['iters']} | {row['median'][key]:.3f} "
                         f"| {row['median']['original']:.3f} | {row['median']['original'] / row['median'][key]:.2f}x "
                         f"| {ours_memory} | {_memory_cell(memory['original'])} |")
    return '\n'.join(lines)


# ----------------------------------------------------------------------------- against the machine's limit

def count_flops(step):
    """Floating-point operations of one call of ``step`` (forward and backward), as counted by
    FlopCounterMode: matrix products and convolutions (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def matmul_peak(device, precision, size, repeats=3):
    """This machine's matrix-multiply rate in FLOP/s at ``precision`` ('fp32' or 'bf16'): the best of
    ``repeats`` products of two ``size`` x ``size`` matrices (after one untimed)."""
    import torch
    dtype = torch.bfloat16 if precision == 'bf16' else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    torch.mm(a, b)
    best = float('inf')
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def profile_step(step, device, top):
    """The ``top`` operators of one step by their own time (self CPU time; self CUDA time on a GPU):
    a list of (name, calls, self milliseconds, share of the step's self time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        step()
        _synchronize(device)
    events = prof.key_averages()
    attribute = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    total = sum(getattr(e, attribute) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attribute), reverse=True)[:top]
    return [(e.key, e.count, getattr(e, attribute) / 1e3, getattr(e, attribute) / total) for e in ranked]


def utilisation(name, args, device_name):
    """FLOPs, seconds per step and fraction of the measured matmul peak for each --precision of
    configuration ``name`` (alternating rounds), and a profile of each; returns (rows, profiles)."""
    import torch
    device = torch.device(device_name)
    size = args.peak_size or (8192 if device.type == 'cuda' else 2048)
    iters = args.iters or (20 if device.type == 'cuda' else 1)
    steps, flops = {}, {}
    for precision in args.precision:
        concrete = resolve_precision(precision, device)
        _, steps[concrete], _ = build_ours(name, args, device_name, precision)
        torch.manual_seed(1)
        for _ in range(max(args.warmup, 1)):
            steps[concrete]()
        flops[concrete] = count_flops(steps[concrete])
    seconds = {p: [] for p in steps}
    peaks = {p: [] for p in steps}
    for round_index in range(args.rounds):
        for precision in (list(steps) if round_index % 2 == 0 else list(steps)[::-1]):
            peaks[precision].append(matmul_peak(device, precision, size))
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                steps[precision]()
            _synchronize(device)
            seconds[precision].append((time.perf_counter() - start) / iters)
        print('#   round ' + ', '.join(f'{p}: {seconds[p][-1]:.3f} s / step, peak {peaks[p][-1] / 1e9:.0f} GFLOP/s'
                                     for p in steps), flush=True)
    rows = []
    for precision in steps:
        fractions = [flops[precision] / s / peak for s, peak in zip(seconds[precision], peaks[precision])]
        step_seconds = statistics.median(seconds[precision])
        rows.append({'config': name, 'device': device_name, 'precision': precision, 'seconds': step_seconds,
                     'flops': flops[precision], 'achieved': flops[precision] / step_seconds,
                     'peak': statistics.median(peaks[precision]), 'fraction': statistics.median(fractions),
                     'rounds': args.rounds, 'iters': iters, 'threads': torch.get_num_threads()})
    profiles = {precision: profile_step(step, device, args.top) for precision, step in steps.items()}
    return rows, profiles


def format_utilisation(rows):
    lines = ['| configuration | device | precision | threads | s / step | GFLOP / step | achieved GFLOP/s '
             '| matmul peak GFLOP/s | fraction of peak |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {CONFIGS[r['config']][1]} | {r['device']} | {r['precision']} "
                     f"| {r['threads'] if r['device'] == 'cpu' else ''} | {r['seconds']:.3f} | {r['flops'] / 1e9:.1f} "
                     f"| {r['achieved'] / 1e9:.1f} | {r['peak'] / 1e9:.0f} | {r['fraction']:.1%} |")
    return '\n'.join(lines)


def format_profile(profile):
    lines = ['| operator | calls | self ms | share of the step |', '|---|---|---|---|']
    lines += [f'| `{key}` | {calls} | {ms:.1f} | {share:.1%} |' for key, calls, ms, share in profile]
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    ensure_perceptual_weights(args)
    if args.single:
        name, device, *which = args.single.split('@')
        result = measure_memory(name, args, device, which[0]) if which else measure(name, args, device)
        print('RESULT ' + json.dumps(result), flush=True)
        return
    import torch
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    rows = []
    if args.utilisation:
        if args.threads:
            torch.set_num_threads(args.threads)
        profiles = []
        for device in devices:
            for name in args.configs:
                found, profile = utilisation(name, args, device)
                rows += found
                profiles += [(name, device, precision, table) for precision, table in profile.items()]
        print(f'\ntorch {torch.__version__}; StyleGAN2 loss {args.loss_fn}; random-weight generators; FLOPs counted '
              f'by FlopCounterMode over one step (forward and backward); medians of {args.rounds} alternating '
              'rounds\n')
        print(format_utilisation(rows))
        for name, device, precision, table in profiles:
            print(f'\nProfile of one step: {CONFIGS[name][1]}, {device}, {precision}\n')
            print(format_profile(table))
        return
    if (len(args.precision) > 1 or len(args.modconv) > 1 or len(args.compile) > 1 or len(args.layout) > 1) \
            and not args.official and not args.utilisation:
        print('| configuration | device | loss | precision, modulated convolution, compile | s / step '
              '| first two losses | warm-up s (2 steps) |')
        print('|---|---|---|---|---|---|---|')
        for device in devices:
            for name in args.configs:
                for label, (seconds, losses, warmup) in compare_variants(name, args, device).items():
                    print(f"| {CONFIGS[name][1]} | {device} | {args.loss_fn} | {label} | {seconds:.3f} "
                          f"| {', '.join(f'{v:.4f}' for v in losses)} | {warmup:.1f} |", flush=True)
        return
    for device in devices:
        for name in args.configs:
            if args.official:
                memory = {which: run_in_fresh_process(name, args, device, which) if args.memory else None
                          for which in ('ours', 'original')}
                row = compare(name, args, device)
                rows.append((name, device, row, memory))
                print(f"# {name} on {device}: ours {row['median']['ours']:.3f} s/step, original "
                      f"{row['median']['original']:.3f} s/step ({row['ratio']:.2f}x); first losses "
                      f"{row['first_loss']['ours']:.5f} / {row['first_loss']['original']:.5f}", flush=True)
                continue
            row = run_in_fresh_process(name, args, device)
            rows.append((name, device, row))
            summary = row if isinstance(row, str) else f"{row['seconds_per_step']:.3f} s/step"
            print(f'# {name} on {device}: {summary}', flush=True)
    print(f'\ntorch {torch.__version__}; StyleGAN2 loss {args.loss_fn}; random-weight generators; '
          f'warm-up {args.warmup} step(s)\n')
    print(format_comparison(rows) if args.official else format_table(rows))
    if args.official:
        print('\nspeed-up: the original\'s median seconds per step over ours, timed in alternating rounds in one '
              'process on the same weights')


if __name__ == '__main__':
    main()
