"""Mixed precision for the training objective: ``--precision auto|fp32|bf16``.

bf16 runs the generator, the spatial transformer and the perceptual network
under ``torch.autocast`` (convolutions and matrix products in bfloat16,
reductions and the losses in float32); the weights, their gradients and the
optimiser stay float32. ``auto`` picks per device type what measured fastest
with equal results (``AUTO_PRECISION``; see the README's speed section).
"""
import contextlib

import torch

PRECISIONS = ('auto', 'fp32', 'bf16')

# What 'auto' means per device type, by measurement (benchmarks/bench_train.py --precision):
# on the development CPU (AVX-512 BF16) bf16 did not pay at 64 px; CUDA is unmeasured, so float32.
AUTO_PRECISION = {'cpu': 'fp32', 'cuda': 'fp32'}

_DTYPES = {'bf16': torch.bfloat16}


def resolve_precision(precision, device):
    """The concrete precision ('fp32' or 'bf16') that ``precision`` means on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f'unknown precision {precision!r}; choose one of {", ".join(PRECISIONS)}')
    if precision == 'auto':
        return AUTO_PRECISION.get(torch.device(device).type, 'fp32')
    return precision


def autocast(precision, device):
    """A context that runs its body at ``precision`` on ``device`` (a no-op for fp32)."""
    resolved = resolve_precision(precision, device)
    if resolved == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[resolved])
