"""Known outliers for the synthetic world: off-class images mixed into a dataset.

Curation tools (flow scores, --fraction_retained) are measured by how well
they find these. Which images are outliers depends only on (number of images,
fraction, seed); each outlier is one of three kinds, in turn:

- ``cut``: the face pushed so far off-centre that the frame cuts most of it;
- ``tiny``: the face drawn at a sixth of its usual size, so the image is
  mostly background;
- ``scrambled``: a rendered face whose 4 x 4 tiles are shuffled (every part
  present, none where it belongs).

The dataset records them in ``outliers.pt``: a long tensor (N,), 0 for an
ordinary image, else 1 + the index of its kind in ``OUTLIER_KINDS``.
"""
import math

import numpy as np
import torch

from utils.errors import UserError
from utils.image_io import tensor_to_uint8
from synthetic_world.dataset import indexed_params
from synthetic_world.drawing import render

OUTLIER_KINDS = ('cut', 'tiny', 'scrambled')
OUTLIERS_FILE = 'outliers.pt'
SCRAMBLE_TILES = 4


def outlier_labels(num_images, fraction, seed):
    """(N,) long labels: 0 for an ordinary image, 1 + kind for an outlier.

    round(fraction * N) images, chosen by a stream of their own (seeded by
    ``seed``), are outliers; kinds go round OUTLIER_KINDS in index order.
    """
    if not 0 <= fraction < 1:
        raise UserError(f'--outlier_fraction must be in [0, 1), got {fraction}')
    count = int(round(fraction * num_images))
    state = np.random.SeedSequence([seed, 0x0771E5]).generate_state(1)[0]
    chosen = torch.randperm(num_images, generator=torch.Generator().manual_seed(int(state)))[:count].sort().values
    labels = torch.zeros(num_images, dtype=torch.long)
    labels[chosen] = torch.arange(count) % len(OUTLIER_KINDS) + 1
    return labels


def _scramble(images, indices, seed):
    """Shuffle the SCRAMBLE_TILES x SCRAMBLE_TILES tiles of each image (a fixed permutation per index)."""
    n, channels, size, _ = images.shape
    tile = size // SCRAMBLE_TILES
    body = images[:, :, :tile * SCRAMBLE_TILES, :tile * SCRAMBLE_TILES]
    tiles = body.reshape(n, channels, SCRAMBLE_TILES, tile, SCRAMBLE_TILES, tile).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n, SCRAMBLE_TILES ** 2, channels, tile, tile)
    orders = []
    for index in indices.tolist():
        stream = torch.Generator().manual_seed(seed * 1_000_003 + index)
        order = torch.randperm(SCRAMBLE_TILES ** 2, generator=stream)
        while bool((order == torch.arange(order.numel())).any()):  # no tile stays in place
            order = torch.randperm(SCRAMBLE_TILES ** 2, generator=stream)
        orders.append(order)
    shuffled = tiles[torch.arange(n)[:, None], torch.stack(orders)]
    shuffled = shuffled.reshape(n, SCRAMBLE_TILES, SCRAMBLE_TILES, channels, tile, tile).permute(0, 3, 1, 4, 2, 5)
    out = images.clone()
    out[:, :, :tile * SCRAMBLE_TILES, :tile * SCRAMBLE_TILES] = shuffled.reshape(n, channels, tile * SCRAMBLE_TILES,
                                                                                 tile * SCRAMBLE_TILES)
    return out


@torch.no_grad()
def render_outliers(indices, labels, size, seed, factors=None):
    """Render the outlier images of dataset ``indices`` (their labels from ``outlier_labels``).

    The face of each outlier is the one the dataset would have drawn at that
    index, altered as its kind says.
    Returns:
        uint8 numpy images (M, S, S, 3) and keypoints (M, P, 3) (visibility 0
        for scrambled faces, whose parts are nowhere in particular).
    """
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    params = indexed_params(indices, seed, factors)
    kinds = labels - 1
    cut = kinds == OUTLIER_KINDS.index('cut')
    if cut.any():
        # Centre 0.42 to 0.5 of the canvas away along a random direction: most of the face leaves the frame.
        angle = 2 * math.pi * (indices.double() * 0.6180339887 % 1).float()
        reach = 0.42 + 0.08 * (indices.double() * 0.7548776662 % 1).float()
        away = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * reach[:, None]
        params['translation'] = torch.where(cut[:, None], away, params['translation'])
    tiny = kinds == OUTLIER_KINDS.index('tiny')
    params['scale'] = torch.where(tiny, params['scale'] / 6, params['scale'])
    images, keypoints = render(params, size)
    scrambled = kinds == OUTLIER_KINDS.index('scrambled')
    if scrambled.any():
        images[scrambled] = _scramble(images[scrambled], indices[scrambled], seed)
        keypoints[scrambled, :, 2] = 0
    return tensor_to_uint8(images), keypoints
