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
    """uint8 (H, W, 3) RGB array -> encoded bytes in ``image_format`` ('png' or 'jpeg');
    a (H, W, 4) RGBA array keeps its alpha (png only)."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got '{image_format}'")
    array = np.ascontiguousarray(array, dtype=np.uint8)
    buffer = BytesIO()
    kwargs = {'quality': quality} if image_format == 'jpeg' else {}
    mode = 'RGBA' if array.ndim == 3 and array.shape[2] == 4 else 'RGB'
    Image.fromarray(array, mode).save(buffer, format=image_format.upper(), **kwargs)
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


def image_has_alpha(image):
    """Whether a PIL image carries transparency (an alpha band or a transparent colour)."""
    return image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info


class UntrustedImageError(ValueError):
    """Bytes from outside (an upload) that are not an acceptable image; the message says why."""


UPLOAD_FORMATS = ('PNG', 'JPEG', 'WEBP', 'BMP', 'GIF')


def decode_untrusted_image(data, max_side, formats=UPLOAD_FORMATS):
    """Decode image bytes that came from outside, refusing what could harm the process.

    The header is read first: the format must be one of ``formats`` and both
    sides at most ``max_side`` pixels, checked before any pixel is decoded (so
    a small file that expands to a huge image is refused cheaply); then the
    pixels are decoded and a truncated or corrupt file is refused.

    Args:
        data: the encoded bytes.
        max_side: largest width or height accepted.
        formats: accepted PIL format names.
    Returns:
        (rgba uint8 (H, W, 4) array, has_alpha): has_alpha is False for images
        without transparency (their alpha is 255 everywhere).
    Raises:
        UntrustedImageError: empty data, not an image, another format, too
            large, or undecodable pixels.
    """
    if not data:
        raise UntrustedImageError('the file is empty')
    try:
        with Image.open(BytesIO(data), formats=list(formats)) as image:
            width, height = image.size
            if width < 1 or height < 1 or max(width, height) > max_side:
                raise UntrustedImageError(f'the image is {width} x {height} pixels; at most {max_side} '
                                          f'pixels per side are accepted')
            image.load()
            has_alpha = image_has_alpha(image)
            return np.array(image.convert('RGBA'), dtype=np.uint8), has_alpha
    except UntrustedImageError:
        raise
    except Image.DecompressionBombError:
        raise UntrustedImageError('the image is too large to decode safely') from None
    except Image.UnidentifiedImageError:  # its text names the in-memory buffer, not the file
        raise UntrustedImageError(f"not a readable image (the format is not one of {', '.join(formats)})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        accepted = ', '.join(formats)
        raise UntrustedImageError(f'not a readable image ({accepted} accepted): {e}') from None

