"""Mixed precision: ``--precision auto|fp32|bf16``.

bf16 runs the convolutions and matrix products of the generator, the spatial
transformers' trunks and the perceptual network under ``torch.autocast``
(bfloat16), with reductions and the losses in float32; the weights, their
gradients and the optimiser stay float32, and the transformers' warp heads
(the regressed similarity and flow, the sampling grids, the warped images)
always run in float32 (see ``full_precision``), so a warp is never rounded
to bfloat16's 8-bit mantissa. ``auto`` picks per device what measured fastest
with equal results (``auto_precision``; docs/benchmarks.md has the
measurements). On CUDA that choice is measured per GPU model by
scripts/gpu_check.sh, which records it (``record_cuda_precision``); a GPU
model without a record runs fp32.
"""
import contextlib
import functools
import json
import os
import warnings

import torch

from utils.atomic_io import atomic_write

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
    other CPUs; on CUDA what scripts/gpu_check.sh measured and recorded for this GPU model
    (``decide_cuda_precision``), float32 for a model it has not measured."""
    if device_type == 'cpu' and cpu_has_native_bf16():
        return 'bf16'
    if device_type == 'cuda' and torch.cuda.is_available():
        return recorded_cuda_precision(cuda_device_key()) or 'fp32'
    return 'fp32'


# ----------------------------------------------------------------------------- the CUDA choice, measured

RECORD_ENV_VAR = 'GANGEALING_PRECISION_RECORD'
# bf16 must make the training step at least this much faster (same run, alternating rounds) ...
MIN_TRAINING_SPEEDUP = 1.1
# ... and must not make transformer inference slower, with results that agree with fp32.
MIN_INFERENCE_SPEEDUP = 1.0


def precision_record_path():
    """The file of measured CUDA choices: $GANGEALING_PRECISION_RECORD, else
    ``$XDG_CACHE_HOME/gangealing/cuda_precision.json`` (``~/.cache`` without XDG_CACHE_HOME)."""
    if os.environ.get(RECORD_ENV_VAR):
        return os.environ[RECORD_ENV_VAR]
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(cache, 'gangealing', 'cuda_precision.json')


def cuda_device_key(device=None):
    """The GPU model a measurement belongs to, e.g. 'NVIDIA H100 80GB HBM3 (sm_90), torch 2.14.1+cu130'."""
    major, minor = torch.cuda.get_device_capability(device)
    return f'{torch.cuda.get_device_name(device)} (sm_{major}{minor}), torch {torch.__version__}'


def decide_cuda_precision(training_speedup, inference_speedup, results_agree, bf16_supported=True):
    """'bf16' or 'fp32' for 'auto' on a GPU model, from measurements in one run.

    Args:
        training_speedup: fp32 seconds per training step / bf16 seconds per step.
        inference_speedup: the same ratio for the transformer's forward pass.
        results_agree: bf16's losses and warps agree with fp32's (gpu_check's tolerances).
        bf16_supported: the GPU computes in bfloat16 (``torch.cuda.is_bf16_supported()``).
    bf16 only where it is supported, agrees, speeds training up by MIN_TRAINING_SPEEDUP and
    does not slow inference down (one choice serves train.py and the applications).
    """
    if (bf16_supported and results_agree and training_speedup >= MIN_TRAINING_SPEEDUP
            and inference_speedup >= MIN_INFERENCE_SPEEDUP):
        return 'bf16'
    return 'fp32'


def _read_records(path):
    try:
        with open(path, encoding='utf-8') as f:
            records = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        warnings.warn(f'{path} is unreadable ({error}); --precision auto runs fp32 on CUDA until '
                      f'scripts/gpu_check.sh writes it again', RuntimeWarning, stacklevel=3)
        return {}
    return records if isinstance(records, dict) else {}


@functools.lru_cache(maxsize=None)  # asked at every forward pass of an 'auto' trunk
def recorded_cuda_precision(key, path=None):
    """The recorded choice ('fp32' or 'bf16') for GPU model ``key``, or None."""
    entry = _read_records(path or precision_record_path()).get(key)
    choice = entry.get('precision') if isinstance(entry, dict) else None
    return choice if choice in ('fp32', 'bf16') else None


def record_cuda_precision(key, choice, measurements, path=None):
    """Record ``choice`` for GPU model ``key`` with the ``measurements`` (a dict) behind it, keeping
    the other models' entries; written atomically. Returns the file's path."""
    if choice not in ('fp32', 'bf16'):
        raise ValueError(f'a recorded precision is fp32 or bf16, got {choice!r}')
    path = path or precision_record_path()
    records = _read_records(path)
    records[key] = {'precision': choice, **measurements}
    atomic_write(path, lambda f: json.dump(records, f, indent=1, sort_keys=True), mode='w')
    recorded_cuda_precision.cache_clear()
    return path


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


def cpu_float32_convolutions(tensor):
    """True when convolutions of ``tensor`` run in float32 on a CPU: a float32 CPU tensor outside an
    enabled CPU autocast (which would run them in bfloat16)."""
    return tensor.device.type == 'cpu' and tensor.dtype == torch.float32 and not torch.is_autocast_enabled('cpu')


def at_least_float32(tensor):
    """``tensor`` as float32 when it is a lower-precision float (bfloat16, float16); otherwise unchanged."""
    if tensor.is_floating_point() and torch.finfo(tensor.dtype).bits < 32:
        return tensor.float()
    return tensor
