"""Checkpoint contents beyond module weights: format version, iteration, RNG states."""
import os
import random

import numpy as np
import torch

from utils.errors import UserError, WeightsMismatchError

# Version 1: the original GANgealing keys plus 'iteration', 'rng_state', 'format_version'
#   (RNG states as NumPy arrays and tuples: loading them needs NumPy on the allow-list).
# Version 2: RNG states as tensors and plain containers (loadable with only
#   argparse.Namespace allowed), plus 'rank_rng_states' (one per rank) under DDP.
CHECKPOINT_FORMAT_VERSION = 2
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


def _plain_numpy_state(state):
    name, keys, pos, has_gauss, cached = state
    return {'bit_generator': str(name), 'keys': torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            'pos': int(pos), 'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}


def _numpy_state_from_plain(state):
    if isinstance(state, dict):
        keys = state['keys'].numpy().astype(np.uint32)
        return (state['bit_generator'], keys, state['pos'], state['has_gauss'], state['cached_gaussian'])
    return state  # format version 1: NumPy's own tuple


def _plain_python_state(state):
    version, internal, gauss_next = state
    return {'version': int(version), 'internal': torch.tensor(internal, dtype=torch.int64),
            'gauss_next': None if gauss_next is None else float(gauss_next)}


def _python_state_from_plain(state):
    if isinstance(state, dict):
        return (state['version'], tuple(int(v) for v in state['internal'].tolist()), state['gauss_next'])
    return state  # format version 1: random.getstate()'s tuple


def get_rng_state():
    """Torch (CPU and every CUDA device), NumPy and Python RNG states of this process.

    Returns a dict of tensors and plain containers only (no NumPy objects), so a
    checkpoint holding it loads with ``torch.load(weights_only=True)``:
    'torch' (uint8 tensor), 'cuda' (list of uint8 tensors, with CUDA),
    'numpy' ({'keys': (624,) int64 tensor, 'pos', ...}) and 'python'
    ({'internal': (625,) int64 tensor, ...}).
    """
    state = {'torch': torch.get_rng_state(), 'numpy': _plain_numpy_state(np.random.get_state()),
             'python': _plain_python_state(random.getstate())}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def with_rng_states(content, rng_states):
    """``content`` (a checkpoint dict) with every rank's RNG state: rank 0's as ``rng_state`` and,
    under torchrun, all of them in rank order as ``rank_rng_states`` (what ``set_rng_state`` reads)."""
    content['rng_state'] = rng_states[0]
    if len(rng_states) > 1:
        content['rank_rng_states'] = rng_states
    return content


def _apply_rng_state(state):
    torch.set_rng_state(state['torch'])
    np.random.set_state(_numpy_state_from_plain(state['numpy']))
    random.setstate(_python_state_from_plain(state['python']))
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def set_rng_state(ckpt, seed, iteration):
    """Restore this rank's RNG states from a checkpoint dict (exact resume).

    Uses ``ckpt['rank_rng_states'][rank]`` when the checkpoint was written by
    as many ranks as there are now, else ``ckpt['rng_state']`` on rank 0; both
    the tensor form (format 2) and the NumPy form (format 1) are accepted.
    Other ranks, and checkpoints without RNG state, reseed deterministically
    from (seed, iteration, rank) so a resumed run is still reproducible.
    """
    from utils.distributed import get_rank, get_world_size
    rank, world_size = get_rank(), get_world_size()
    per_rank = ckpt.get('rank_rng_states')
    if per_rank is not None and len(per_rank) == world_size:
        _apply_rng_state(per_rank[rank])
        return
    if ckpt.get('rng_state') is not None and rank == 0:
        _apply_rng_state(ckpt['rng_state'])
        return
    derived = (seed * world_size + rank) * 1_000_003 + iteration
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
        raise UserError(f'{path}: {e}; set --gen_size, --dim_latent, --n_mlp, --gen_channel_multiplier '
                        f'and --gen_channel_max to match it') from None
    except UserError as e:
        raise UserError(f'{path}: {e}') from None
    except RuntimeError as e:
        detail = ' '.join(line.strip() for line in str(e).strip().splitlines()[:2])
        raise UserError(f'the generator weights in {path} do not fit the configured generator '
                        f'({type(generator).__name__}; check --generator, --gen_size, --dim_latent, --n_mlp, '
                        f'--gen_channel_multiplier): {detail[:400]}') from None
