"""Spatial transformer throughput: forward and forward+backward images per second.

    python -m benchmarks.bench_stn                      # CPU, and CUDA when present
    python -m benchmarks.bench_stn --batches 5 --reps 2 --devices cpu
    python -m benchmarks.bench_stn --official ../gangealing --devices cpu --threads 2   # beside the original

Prints a markdown table. The default configuration is the released models'
(similarity then flow, flow_size 128, 256-pixel inputs, channel multiplier 0.5).

With ``--official PATH`` (a checkout of the original GANgealing code, imported
as ``benchmarks/official.py`` describes) it measures inference beside the
original instead: the transformer's forward pass on the same weights (batch 8
by default; plain, ``iters 3``, with flips, both), and the StyleGAN2 generator's
forward pass (``--gen_size`` 256, channel multiplier 2, random weights copied
into both; the transformer's zero-initialised last layers get small random
weights, so that its warps are not the identity). Each row is timed in
alternating rounds (ours, original, original, ours, ...) in one process, and
the table gives images per second and the
speed-up (ours over the original). Ours runs at ``--precision`` (default
auto, as the applications: bf16 trunks on a CPU with native bfloat16); when
that is not fp32, our fp32 is timed in the same rounds too, and every row
gives the largest difference from the original's output.
"""
import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from models import get_stn
from utils.precision import PRECISIONS, autocast, resolve_precision


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--transforms', nargs='+', default=['similarity', 'flow'])
    parser.add_argument('--flow_size', type=int, default=128)
    parser.add_argument('--supersize', type=int, default=256)
    parser.add_argument('--channel_multiplier', type=float, default=0.5)
    parser.add_argument('--num_heads', type=int, default=1)
    parser.add_argument('--batches', type=int, nargs='+', default=None,
                        help='batch sizes (default: 5 and 40; 8 with --official)')
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions per measurement')
    parser.add_argument('--cpu_reps_large', type=int, default=2,
                        help='repetitions on the CPU for batches above 8 (they are slow)')
    parser.add_argument('--devices', nargs='+', default=None,
                        help="devices to measure (default: cpu, plus cuda when available)")
    parser.add_argument('--official', default=None, metavar='PATH',
                        help='checkout of the original GANgealing code: compare inference with it')
    parser.add_argument('--rounds', type=int, default=3, help='with --official: alternating timed rounds')
    parser.add_argument('--gen_size', type=int, default=256, help='with --official: generator resolution')
    parser.add_argument('--gen_batch', type=int, default=4, help='with --official: generator batch')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help="our transformer trunk's (and, with --official, our generator's) arithmetic, as the "
                             "applications' --precision; with --official a precision other than fp32 is timed "
                             'beside our fp32 and the original')
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = [8] if args.official else [5, 40]
    return args


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


def alternating(functions, batch, rounds, device):
    """Images per second of each of ``functions`` ({name: callable}), timed in alternating rounds
    after one warm-up call each; returns {name: median images per second}."""
    for function in functions.values():
        function()
    seconds = {name: [] for name in functions}
    names = list(functions)
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            synchronize(device)
            start = time.perf_counter()
            functions[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(values) for name, values in seconds.items()}


def compare_with_official(args, name):
    """Rows (what, batch, precision, ours img/s, original img/s, max |difference|) of the inference comparison
    on device ``name``."""
    from benchmarks.official import load_official, official_models_like
    from models import Generator
    device = torch.device(name)
    official = load_official(args.official)
    torch.manual_seed(0)
    stn = get_stn(args.transforms, flow_size=args.flow_size, supersize=args.supersize,
                  channel_multiplier=args.channel_multiplier, num_heads=args.num_heads).to(device).eval()
    with torch.no_grad():  # heads that move (a fresh transformer's last layers are zero: the identity warp)
        for parameter_name, parameter in stn.named_parameters():
            if 'warp_head' in parameter_name and not parameter.abs().sum():
                parameter.normal_(0, 0.01)
    opt = SimpleNamespace(gen_size=args.gen_size, dim_latent=512, n_mlp=8, gen_channel_multiplier=2,
                          flow_size=args.flow_size, real_size=args.supersize, transform=args.transforms,
                          stn_channel_multiplier=args.channel_multiplier, num_heads=args.num_heads, ndirs=1,
                          inject=5)
    generator = Generator(args.gen_size, 512, 8, channel_multiplier=2).to(device).eval()
    from models.latent_learner import DirectionInterpolator
    ll = DirectionInterpolator(1, 5, generator.n_latent, 512)
    their_g, their_stn, _, _ = official_models_like(official, opt, generator, stn, ll, device)
    their_stn.eval()
    variants = [resolve_precision(args.precision, device)]
    if variants[0] != 'fp32':
        variants.append('fp32')
    rows = []
    for batch in args.batches:
        images = torch.rand(batch, 3, args.supersize, args.supersize, device=device) * 2 - 1
        for label, kwargs, flips in (('STN forward', {}, False), ('STN forward, iters 3', {'iters': 3}, False),
                                     ('STN forward with flips', {}, True),
                                     ('STN forward, iters 3, flips', {'iters': 3}, True)):
            def run(model, kwargs=kwargs, flips=flips):
                with torch.no_grad():
                    out = model.forward_with_flip(images, **kwargs) if flips else model(images, **kwargs)
                return out[0] if isinstance(out, tuple) else out
            functions = {'original': lambda: run(their_stn)}
            functions.update({v: (lambda v=v: run(stn.set_precision(v))) for v in variants})
            rows += _compare(name, label, batch, functions, variants, args, device)

    z = torch.randn(args.gen_batch, 512, device=device)

    def generate(model, precision='fp32'):
        with torch.no_grad(), autocast(precision, device):
            return model([z], randomize_noise=False)[0].float()
    functions = {'original': lambda: generate(their_g)}
    functions.update({v: (lambda v=v: generate(generator, v)) for v in variants})
    rows += _compare(name, f'StyleGAN2 {args.gen_size} px (cm 2) forward', args.gen_batch, functions, variants,
                     args, device)
    return rows


def _compare(name, label, batch, functions, variants, args, device):
    """Rows (what, batch, precision, ours img/s, original img/s, max |ours - original|) for one workload:
    ``functions`` maps 'original' and each of our precision ``variants`` to a callable returning the output."""
    reference = functions['original']()
    differences = {v: (functions[v]() - reference).abs().max().item() for v in variants}
    rates = alternating(functions, batch, args.rounds, device)
    rows = []
    for v in variants:
        rows.append((label, batch, v, rates[v], rates['original'], differences[v]))
        print(f"# {name} {label} batch {batch}: ours ({v}) {rates[v]:.2f}, original {rates['original']:.2f} img/s "
              f'(max |difference| {differences[v]:.1e})', flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official:
        devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
        rows = [(name, *row) for name in devices for row in compare_with_official(args, name)]
        print(f'\nSTN {args.transforms}, flow_size {args.flow_size}, input {args.supersize}px, channel_multiplier '
              f'{args.channel_multiplier}; random weights copied into both; torch {torch.__version__}, '
              f'{torch.get_num_threads()} CPU threads; medians of {args.rounds} alternating rounds\n')
        print('| device | what | batch | our precision | ours (img/s) | original (img/s) | speed-up | '
              'max abs difference |')
        print('|---|---|---|---|---|---|---|---|')
        for name, what, batch, precision, ours, theirs, difference in rows:
            print(f'| {name} | {what} | {batch} | {precision} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}x '
                  f'| {difference:.1e} |')
        return
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    rows = []
    for name in devices:
        device = torch.device(name)
        torch.manual_seed(0)
        stn = get_stn(args.transforms, flow_size=args.flow_size, supersize=args.supersize,
                      channel_multiplier=args.channel_multiplier,
                      num_heads=args.num_heads).to(device).set_precision(args.precision)
        for batch in args.batches:
            reps = args.cpu_reps_large if device.type == 'cpu' and batch > 8 else args.reps
            fwd, fwd_bwd = measure(stn, batch, reps, device, args.supersize)
            rows.append((name, batch, reps, fwd, fwd_bwd))
            print(f'# {name} batch {batch}: {fwd:.1f} / {fwd_bwd:.1f} images/s', flush=True)
    threads = torch.get_num_threads()
    print(f'\nSTN {args.transforms}, flow_size {args.flow_size}, input {args.supersize}px, '
          f'channel_multiplier {args.channel_multiplier}, heads {args.num_heads}, precision {args.precision}, '
          f'torch {torch.__version__}, {threads} CPU threads\n')
    print('| device | batch | reps | forward (img/s) | forward+backward (img/s) |')
    print('|---|---|---|---|---|')
    for name, batch, reps, fwd, fwd_bwd in rows:
        print(f'| {name} | {batch} | {reps} | {fwd:.1f} | {fwd_bwd:.1f} |')


if __name__ == '__main__':
    main()
