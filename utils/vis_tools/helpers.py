"""``load_pil`` and ``save_image`` under the names the original release's README snippet imports.

The snippet (load a released transformer, align one image) runs unchanged: it
takes ``get_stn`` from ``models``, ``download_model`` and
``PRETRAINED_TEST_HYPERPARAMS`` from ``utils.download``, and these two from here.
"""
import numpy as np
import torch
from PIL import Image

from utils.atomic_io import atomic_write
from utils.distributed import choose_device
from utils.image_io import tensor_to_uint8


def load_pil(path, resolution=None, device=None):
    """An image file as a (1, 3, H, W) float tensor in [-1, 1].

    Args:
        path: any image Pillow reads (converted to RGB: alpha and palettes are dropped).
        resolution: resize to (resolution, resolution) with Lanczos filtering first, as the
            original does (None keeps the file's size).
        device: where the tensor goes (default: CUDA when available, else the CPU).
    """
    with Image.open(path) as image:
        image = image.convert('RGB')
        if resolution is not None:
            image = image.resize((resolution, resolution), Image.LANCZOS)
        array = np.asarray(image, dtype=np.float32)
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    return (tensor / 255.0 - 0.5).mul(2).to(device or choose_device('auto'))  # where the snippet's model ends up


def save_image(images, path, nrow=8, padding=2, normalize=False, value_range=None, range=None, **grid_kwargs):
    """Save (N, C, H, W) (or (C, H, W)) images as one PNG grid, atomically.

    The arguments are torchvision.utils.save_image's, and ``range`` (the
    original's name for ``value_range``, which newer torchvision refuses) is
    accepted too. With ``normalize`` the values in ``value_range`` (default:
    each grid's own min and max) map to 0..255.
    """
    from torchvision.utils import make_grid

    if range is not None and value_range is not None:
        raise TypeError('save_image takes value_range or range (its older name), not both')
    value_range = value_range if value_range is not None else range
    images = images.detach().float().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(0)
    grid = make_grid(images, nrow=nrow, padding=padding, normalize=normalize, value_range=value_range,
                     **grid_kwargs)
    array = tensor_to_uint8(grid, value_range=(0.0, 1.0))
    return atomic_write(str(path), lambda f: Image.fromarray(array).save(f, format='PNG'))
