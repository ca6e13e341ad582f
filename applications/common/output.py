"""Crash-safe output files of the applications: PNGs, JSON and image grids, each written atomically.

(Not runnable: imported by the applications.)
"""
import json
import math

import numpy as np
import torch
from PIL import Image

from utils.atomic_io import atomic_write
from utils.image_io import tensor_to_uint8


def save_png(array, path):
    """Save a uint8 (H, W, 3) or (H, W) array as a PNG, atomically."""
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format='PNG'))


def save_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    return atomic_write(path, lambda f: f.write(text), mode='w')


def make_grid_array(images, nrow=None, padding=3, value_range=(-1.0, 1.0)):
    """Tile (N, C, H, W) images into one uint8 (H', W', C) array, black borders.

    ``nrow`` images per row (default: int(sqrt(N)), at least 1).
    """
    from torchvision.utils import make_grid

    arrays = torch.from_numpy(tensor_to_uint8(images, value_range)).permute(0, 3, 1, 2)
    nrow = nrow or max(1, int(math.sqrt(images.size(0))))
    grid = make_grid(arrays, nrow=nrow, padding=padding, pad_value=0)
    return grid.permute(1, 2, 0).numpy()


def save_grid(images, path, nrow=None, value_range=(-1.0, 1.0)):
    """Save (N, C, H, W) images as one grid PNG, atomically."""
    return save_png(make_grid_array(images, nrow=nrow, value_range=value_range), path)
