"""Mixed precision: ``--precision auto|fp32|bf16``.

bf16 runs the convolutions and matrix products of the generator, the spatial
transformers' trunks and the perceptual network under ``torch.autocast``
(bfloat16), with reductions and the losses in float32; the weights, their
gradients and the optimiser stay float32, and the transformers' warp heads
(the regressed similarity and flow, the sampling grids, the warped images)
always run in float32 (see ``full_precision``), so a warp is never rounded
to bfloat16's 8-bit mantissa. ``auto`` picks per device what measured fastest
with equal results (``auto_precision``; docs/benchmarks.md has the
measurements).
"""
import contextlib
import functools

import torch

PRECISIONS = ('auto', 'fp32', 'bf16')

_DTYPES = {'bf16': torch.bfloat16}


@functools.lru_cache(maxsize=None)  # asked at every forward pass of an 'auto' trunk
def cpu_has_native_bf16():
    """True when this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX); without it
    oneDNN emulates bfloat16 and float32 is faster."""
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:  # a build without the CPU capability queries
        return False


def auto_precision(device_type):
    """What 'auto' means on a device type, by measurement (benchmarks/bench_train.py and
    bench_stn.py --precision): bf16 on CPUs with native bfloat16 (about 2x per training step
    and per transformer forward pass on the development machine, PCK unchanged), float32 on
    other CPUs; float32 on CUDA, where it has not been measured yet."""
    if device_type == 'cpu' and cpu_has_native_bf16():
        return 'bf16'
    return 'fp32'


def resolve_precision(precision, device):
    """The concrete precision ('fp32' or 'bf16') that ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f'unknown precision {precision!r}; choose one of {", ".join(PRECISIONS)}')
    if precision == 'auto':
        return auto_precision(torch.device(device).type)
    return precision


def autocast(precision, device):
    """A context that runs its body at ``precision`` on ``device`` (a no-op for fp32, so an
    enclosing autocast still applies)."""
    resolved = resolve_precision(precision, device)
    if resolved == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[resolved])


def full_precision(device):
    """A context that turns any enclosing autocast off on ``device``'s type (float32 arithmetic)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def at_least_float32(tensor):
    """``tensor`` as float32 when it is a lower-precision float (bfloat16, float16); otherwise unchanged."""
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        return tensor.float()
    return tensor
