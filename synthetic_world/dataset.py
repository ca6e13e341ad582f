"""Rendering datasets: face i of dataset ``seed`` is the same at every size and batch size."""
import numpy as np
import torch

from utils.errors import UserError
from utils.image_io import tensor_to_uint8
from synthetic_world.drawing import render
from synthetic_world.factors import concat_params, params_to, sample_params, slice_params
from synthetic_world.keypoints import NUM_KEYPOINTS

PARAM_BLOCK = 256  # parameters are drawn in blocks of this many images
MODES_FILE = 'modes.pt'  # a dataset's true modes: long tensor (N,), written by prepare_data.py --synthetic


def _block_seed(seed, block):
    # Well-mixed, platform-independent seed for one parameter block.
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def indexed_params(indices, seed, factors=None):
    """Parameters of the faces with the given dataset ``indices`` for ``seed``.

    Face i's parameters depend only on (seed, i, factors), so any range of a
    dataset can be rendered on its own, in any order and batch size.
    Returns the dict of sample_params for len(indices) faces (CPU).
    """
    if seed < 0:
        raise UserError(f'synthetic world: seed must be >= 0, got {seed}')
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if (indices < 0).any():
        raise UserError('synthetic world: dataset indices must be >= 0')
    blocks, rank = torch.unique(indices // PARAM_BLOCK, return_inverse=True)
    drawn = [sample_params(PARAM_BLOCK, torch.Generator().manual_seed(_block_seed(seed, block)), factors)
             for block in blocks.tolist()]
    if not drawn:
        drawn = [sample_params(0, torch.Generator(), factors)]
    return slice_params(concat_params(drawn), rank * PARAM_BLOCK + indices % PARAM_BLOCK)


def dataset_modes(n, seed, factors=None):
    """(n,) long tensor: the true mode (synthetic_world.MODE_NAMES) of faces 0 .. n-1 of dataset ``seed``."""
    return indexed_params(range(n), seed, factors)['mode'].long()


def iter_render_dataset(n, size, seed, factors=None, batch_size=64, device=None):
    """Render faces 0 .. n-1 of the dataset ``seed`` batch by batch.

    Yields (uint8 numpy images (b, S, S, 3), keypoints (b, NUM_KEYPOINTS, 3)
    float CPU tensor) for consecutive batches; suits writing to disk without
    holding the whole set in memory. ``device`` picks where to render.
    """
    if n < 0:
        raise UserError(f'synthetic world: number of images must be >= 0, got {n}')
    for start in range(0, n, batch_size):
        params = params_to(indexed_params(range(start, min(n, start + batch_size)), seed, factors), device or 'cpu')
        with torch.no_grad():
            images, keypoints = render(params, size)
        yield tensor_to_uint8(images), keypoints.cpu()


def render_dataset(n, size, seed, factors=None, batch_size=64, device=None):
    """Render a dataset of ``n`` faces at ``size`` for ``seed``.

    The same (n, seed, factors) gives the same faces at every size, and a
    smaller n gives a prefix of a larger one.
    Returns:
        uint8 numpy images (N, S, S, 3) and keypoints (N, NUM_KEYPOINTS, 3)
        float tensor (x, y pixels at this size, visibility).
    """
    images, keypoints = [], []
    for batch_images, batch_keypoints in iter_render_dataset(n, size, seed, factors, batch_size, device):
        images.append(batch_images)
        keypoints.append(batch_keypoints)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), torch.zeros(0, NUM_KEYPOINTS, 3)
    return np.concatenate(images), torch.cat(keypoints)
