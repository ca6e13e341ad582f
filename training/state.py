"""Checkpoint contents beyond module weights: format version, iteration, RNG states."""
import os
import random

import numpy as np
import torch

from utils.errors import UserError, WeightsMismatchError

# Version 1: the original GANgealing keys plus 'iteration', 'rng_state', 'format_version'.
CHECKPOINT_FORMAT_VERSION = 1


def checkpoint_iteration(ckpt, path):
    """The iteration a checkpoint was saved at.

    Ours store it; the original's are named by iteration ('0150000.pt',
    'best_0150000.pt'); anything else counts as iteration 0.
    """
    if 'iteration' in ckpt:
        return int(ckpt['iteration'])
    name = os.path.splitext(os.path.basename(path))[0]
    name = name[len('best_'):] if name.startswith('best_') else name
    return int(name) if name.isdigit() else 0


def get_rng_state():
    """Torch (CPU and every CUDA device), numpy and Python RNG states of this process."""
    state = {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(), 'python': random.getstate()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, seed, iteration):
    """Restore RNG states saved by rank 0 (exact resume in one process).

    Other ranks, and checkpoints without RNG state, reseed deterministically from
    (seed, iteration, rank) so a resumed run is still reproducible.
    """
    from utils.distributed import get_rank, get_world_size
    if state is not None and get_rank() == 0:
        torch.set_rng_state(state['torch'])
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])
        if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])
        return
    derived = (seed * get_world_size() + get_rank()) * 1_000_003 + iteration
    torch.manual_seed(derived)
    np.random.seed(derived % 2 ** 32)
    random.seed(derived)


def generator_state_dict(ckpt, path):
    """The generator weights in a checkpoint: 'g_ema' of a GANgealing or
    rosinality checkpoint, or the checkpoint itself when it is a bare state dict."""
    if 'g_ema' in ckpt:
        return ckpt['g_ema']
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise UserError(f'{path} holds no generator weights (no "g_ema" entry; keys: '
                    f'{", ".join(sorted(map(str, ckpt))[:10])}). Pass a GANgealing or rosinality '
                    f'StyleGAN2 checkpoint to --ckpt.')


def load_generator_weights(generator, ckpt, path):
    """Load a checkpoint's generator weights strictly, with a readable error on mismatch."""
    state = generator_state_dict(ckpt, path)
    try:
        generator.load_state_dict(state)
    except WeightsMismatchError as e:
        raise UserError(f'{path}: {e}; set --gen_size, --dim_latent, --n_mlp and --gen_channel_multiplier '
                        f'to match it') from None
    except UserError as e:
        raise UserError(f'{path}: {e}') from None
    except RuntimeError as e:
        detail = ' '.join(line.strip() for line in str(e).strip().splitlines()[:2])
        raise UserError(f'the generator weights in {path} do not fit the configured generator '
                        f'({type(generator).__name__}; check --generator, --gen_size, --dim_latent, --n_mlp, '
                        f'--gen_channel_multiplier): {detail[:400]}') from None
