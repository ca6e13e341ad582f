"""Speed of the fused ops (native vs CUDA) and of the StyleGAN2 generator.

    python -m benchmarks.bench_ops                 # CPU, and the GPU when present
    python -m benchmarks.bench_ops --quick         # smaller shapes, for a smoke run
    python -m benchmarks.bench_ops --devices cpu --iters 3 --gen-sizes 64 256

Prints markdown tables: milliseconds per call of each op implementation at
StyleGAN2-like shapes (forward, and forward + backward), and generator images
per second with the share of that time spent inside upfirdn2d and
fused_leaky_relu.  'native (zero insertion)' is the straightforward native
formulation (materialised zeros, channels folded into the batch), kept here as
a baseline for the depthwise / transposed-convolution one in ops/.
"""
import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

import ops
from ops import cuda_build
from ops.fused_act_native import fused_leaky_relu_native
from ops.upfirdn2d_native import normalize_factors, upfirdn2d_native


def zero_insertion_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Baseline native upfirdn2d: insert zeros, pad, one single-channel conv per plane."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = normalize_factors(up, down, pad)
    n, c, h, w = x.shape
    out = x.reshape(n * c, 1, h, 1, w, 1)
    out = F.pad(out, (0, ux - 1, 0, 0, 0, uy - 1)).reshape(n * c, 1, h * uy, w * ux)
    out = F.pad(out, (px0, px1, py0, py1))
    weight = torch.flip(kernel, (0, 1)).to(out).reshape(1, 1, *kernel.shape)
    out = F.conv2d(out, weight, stride=(dy, dx))
    return out.reshape(n, c, out.shape[2], out.shape[3])


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_ms(fn, device, iters, warmup=1):
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def backend(name):
    previous = cuda_build._state.backend
    ops.set_backend(name)
    try:
        yield
    finally:
        cuda_build._state.backend = previous


def blur_kernel(device):
    taps = torch.tensor([1., 3., 3., 1.], device=device)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


def op_cases(device, quick):
    """(name, input shape, function of (x, implementation)) for the op table."""
    kernel = blur_kernel(device)
    scale = 4 if quick else 1
    cases = [
        ('upfirdn2d up 2, 4x4', (4, 512 // scale, 64 // scale, 64 // scale),
         lambda x, f: f(x, kernel * 4, up=2, pad=(2, 1))),
        ('upfirdn2d blur pad (2, 1)', (4, 256 // scale, 128 // scale, 128 // scale),
         lambda x, f: f(x, kernel, pad=(2, 1))),
        ('upfirdn2d down 2, 4x4', (4, 256 // scale, 128 // scale, 128 // scale),
         lambda x, f: f(x, kernel, down=2, pad=(1, 1))),
    ]
    return cases


def implementations(device):
    impls = [('native (zero insertion)', zero_insertion_upfirdn2d, fused_leaky_relu_native, 'native'),
             ('native', upfirdn2d_native, fused_leaky_relu_native, 'native')]
    if device.type == 'cuda':
        impls.append(('cuda', ops.upfirdn2d, ops.fused_leaky_relu, 'cuda'))
    return impls


def bench_ops(device, dtype, iters, quick):
    rows = []
    for name, shape, call in op_cases(device, quick):
        x = torch.randn(shape, device=device, dtype=dtype)
        for impl_name, upfirdn, _, backend_name in implementations(device):
            with backend(backend_name):
                forward = time_ms(lambda: call(x, upfirdn), device, iters)
                xg = x.clone().requires_grad_()
                both = time_ms(lambda: call(xg, upfirdn).sum().backward(), device, iters)
            rows.append((name, tuple(shape), impl_name, forward, both))
    shape = (4, 512 // (4 if quick else 1), 64 // (4 if quick else 1), 64 // (4 if quick else 1))
    x = torch.randn(shape, device=device, dtype=dtype)
    bias = torch.randn(shape[1], device=device, dtype=dtype)
    for impl_name, _, act, backend_name in implementations(device)[1:]:
        with backend(backend_name):
            forward = time_ms(lambda: act(x, bias), device, iters)
            xg, bg = x.clone().requires_grad_(), bias.clone().requires_grad_()
            both = time_ms(lambda: act(xg, bg).sum().backward(), device, iters)
        rows.append(('fused_leaky_relu + bias', tuple(shape), impl_name, forward, both))
    return rows


class OpTimer:
    """Wraps the ops the generator calls and adds up the time spent inside them."""

    def __init__(self, device):
        self.device = device
        self.seconds = 0.0
        self.patches = []

    def wrap(self, fn):
        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.device)
            self.seconds += time.perf_counter() - start
            return out
        return timed

    def __enter__(self):
        import importlib
        for module_name, attr in [('models.layers', 'upfirdn2d'), ('models.layers', 'fused_leaky_relu'),
                                  ('ops.fused_act', 'fused_leaky_relu')]:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            if hasattr(module, attr):
                original = getattr(module, attr)
                self.patches.append((module, attr, original))
                setattr(module, attr, self.wrap(original))
        return self

    def __exit__(self, *exc):
        for module, attr, original in reversed(self.patches):
            setattr(module, attr, original)


def bench_generator(device, sizes, batch, iters, backends):
    try:
        from models.stylegan2 import Generator
    except ImportError as error:
        return None, f'generator part skipped: models.stylegan2.Generator is not available ({error})'
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        generator = Generator(size, 512, 8, channel_multiplier=2).to(device).eval()
        z = torch.randn(batch, 512, device=device)

        def forward():
            with torch.no_grad():
                generator([z])

        for backend_name in backends:
            with backend(backend_name):
                milliseconds = time_ms(forward, device, iters)
                with OpTimer(device) as timer:
                    total = time_ms(forward, device, 1, warmup=0)
                share = timer.seconds * 1e3 / total if timer.patches else float('nan')
            rows.append((size, batch, backend_name, batch / (milliseconds / 1e3), share))
        del generator
    return rows, None


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--devices', nargs='+', default=None,
                        help='devices to run on (default: cpu, and cuda when available)')
    parser.add_argument('--iters', type=int, default=3, help='timed repetitions (median reported)')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'float64'],
                        help='dtype of the op benchmarks (float16 only on CUDA)')
    parser.add_argument('--gen-sizes', type=int, nargs='*', default=[64, 256])
    parser.add_argument('--gen-batch', type=int, default=2)
    parser.add_argument('--quick', action='store_true', help='4x smaller op shapes')
    args = parser.parse_args()

    devices = args.devices or (['cpu', 'cuda'] if torch.cuda.is_available() else ['cpu'])
    dtype = getattr(torch, args.dtype)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} CPU threads'
          + (f', GPU: {torch.cuda.get_device_name()}' if torch.cuda.is_available() else ', no GPU'))
    for device_name in devices:
        device = torch.device(device_name)
        op_dtype = torch.float32 if device.type == 'cpu' and dtype == torch.float16 else dtype
        print(f'\n## Ops on {device_name} ({str(op_dtype).replace("torch.", "")}, median of {args.iters})\n')
        rows = [(name, 'x'.join(map(str, shape)), impl, f'{fwd:.2f}', f'{both:.2f}')
                for name, shape, impl, fwd, both in bench_ops(device, op_dtype, args.iters, args.quick)]
        print(markdown_table(['op', 'input', 'implementation', 'forward ms', 'forward+backward ms'], rows))

        if args.gen_sizes:
            backends = ['native', 'cuda'] if device.type == 'cuda' else ['native']
            results, note = bench_generator(device, args.gen_sizes, args.gen_batch, args.iters, backends)
            print(f'\n## Generator forward on {device_name} (float32, batch {args.gen_batch}, no grad)\n')
            if note:
                print(note)
                continue
            rows = [(size, batch, name, f'{rate:.2f}', f'{share:.0%}')
                    for size, batch, name, rate, share in results]
            print(markdown_table(['size', 'batch', 'ops', 'images / s', 'time in upfirdn2d + bias-act'], rows))


if __name__ == '__main__':
    main()
