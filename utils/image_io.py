"""Image reading, encoding and conversion between uint8 arrays and tensors.

Arrays are uint8 (H, W, 3) RGB; tensors are float (3, H, W) in [-1, 1].
"""
from io import BytesIO

import numpy as np
import torch
from PIL import Image

IMAGE_FORMATS = ('png', 'jpeg')


def pil_to_rgb_array(image):
    """A PIL image (any mode) -> uint8 (H, W, 3) RGB array."""
    return np.array(image.convert('RGB'), dtype=np.uint8)  # a writable copy


def read_image_file(path):
    """Read an image file -> uint8 (H, W, 3) RGB array.

    Raises whatever PIL raises for unreadable files (OSError and friends);
    callers that skip bad files catch those.
    """
    with Image.open(path) as image:
        image.load()
        return pil_to_rgb_array(image)


def decode_image_bytes(data):
    """Encoded image bytes (png, jpeg, webp, ...) -> uint8 (H, W, 3) RGB array."""
    if data is None:
        raise ValueError('no image data')
    with Image.open(BytesIO(data)) as image:
        image.load()
        return pil_to_rgb_array(image)


def encode_image(array, image_format='png', quality=100):
    """uint8 (H, W, 3) array -> encoded bytes in ``image_format`` ('png' or 'jpeg')."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got '{image_format}'")
    array = np.ascontiguousarray(array, dtype=np.uint8)
    buffer = BytesIO()
    kwargs = {'quality': quality} if image_format == 'jpeg' else {}
    Image.fromarray(array, 'RGB').save(buffer, format=image_format.upper(), **kwargs)
    return buffer.getvalue()


def array_to_tensor(array):
    """uint8 (H, W, 3) array -> float (3, H, W) tensor in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
    return tensor.div_(127.5).sub_(1.0)


def tensor_to_uint8(images, value_range=(-1.0, 1.0)):
    """Float images (N, C, H, W) or (C, H, W) -> uint8 numpy array (..., H, W, C).

    ``value_range`` (lo, hi) maps to 0..255 (values outside are clamped); None
    stretches each image to its own min..max (for average images).
    """
    images = images.detach().float().cpu()
    single = images.dim() == 3
    if single:
        images = images.unsqueeze(0)
    if value_range is None:
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
    else:
        lo, hi = (torch.tensor(float(v)) for v in value_range)
    scaled = ((images - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = scaled.permute(0, 2, 3, 1).numpy()
    return array[0] if single else array


def resize_array(array, width, height):
    """Resize a uint8 (H, W, 3) array to (height, width, 3) with Lanczos filtering
    (anti-aliased when shrinking)."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    image = Image.fromarray(np.ascontiguousarray(array), 'RGB')
    return np.asarray(image.resize((int(width), int(height)), Image.LANCZOS), dtype=np.uint8)
