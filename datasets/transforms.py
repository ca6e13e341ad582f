"""Making images square: the pad modes of prepare_data and the image-folder dataset.

All functions take and return uint8 (H, W, 3) RGB arrays.

Modes (``--pad``):
- ``center``: crop the largest centred square, resize it to S x S;
- ``border``: resize the longer side to S, then extend the shorter side to S
  by repeating the edge pixels (the image sits centred);
- ``zero``: like ``border`` but the bars are black;
- ``resize_small_side``: resize so the shorter side is S, keeping the aspect
  ratio (not square);
- ``none``: keep the image as it is.
"""
import numpy as np

from utils.image_io import resize_array

PAD_MODES = ('center', 'border', 'zero', 'resize_small_side', 'none')


def fit_long_side(width, height, size):
    """(new_width, new_height) when the longer side is resized to ``size``."""
    if height <= width:
        return size, int(np.around(size * height / width))
    return int(np.around(size * width / height)), size


def pad_geometry(width, height, size):
    """Where a ``border``/``zero`` padded image lands in the S x S result.

    Returns:
        (offset_x, offset_y, scale): a point (x, y) of the original image maps
        to (x * scale + offset_x, y * scale + offset_y) at size S.
    """
    new_width, new_height = fit_long_side(width, height, size)
    scale = size / max(width, height)
    return (size - new_width) // 2, (size - new_height) // 2, scale


def center_crop(image, size):
    """Crop the centred square of side min(H, W) and resize it to (size, size)."""
    height, width = image.shape[:2]
    crop = min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    square = image[top: top + crop, left: left + crop]
    return resize_array(square, size, size)


def _pad_to_square(image, size, mode):
    height, width = image.shape[:2]
    new_width, new_height = fit_long_side(width, height, size)
    resized = resize_array(image, new_width, new_height)
    offset_x, offset_y, _ = pad_geometry(width, height, size)
    pad_width = [(offset_y, size - new_height - offset_y), (offset_x, size - new_width - offset_x), (0, 0)]
    if mode == 'zero':
        return np.pad(resized, pad_width, mode='constant', constant_values=0)
    return np.pad(resized, pad_width, mode='edge')


def border_pad(image, size):
    """Longer side -> size, shorter side padded to size with repeated edge pixels."""
    return _pad_to_square(image, size, 'border')


def zero_pad(image, size):
    """Longer side -> size, shorter side padded to size with black bars."""
    return _pad_to_square(image, size, 'zero')


def resize_small_side(image, size):
    """Resize so the shorter side is ``size``; the longer one keeps the aspect ratio
    (rounded down)."""
    height, width = image.shape[:2]
    if width < height:
        return resize_array(image, size, height * size // width)
    return resize_array(image, width * size // height, size)


def square_window(width, height, mode):
    """Where the square of pad mode ``mode`` ('center', 'border' or 'zero') sits, at the image's own scale.

    Returns:
        (side, x, y): for ``center`` the square is image[y:y + side, x:x + side];
        for ``border``/``zero`` the image sits at (x, y) inside a side x side square.
        Resized to S, that square is what ``make_square(image, S, mode)`` makes.
    """
    if mode == 'center':
        side = min(width, height)
        return side, (width - side) // 2, (height - side) // 2
    if mode in ('border', 'zero'):
        side = max(width, height)
        return side, (side - width) // 2, (side - height) // 2
    raise ValueError(f"pad mode '{mode}' has no square window; choose center, border or zero")


def native_square(image, mode):
    """The square of ``make_square(image, S, mode)`` before resizing: (side, side, 3) at the image's scale."""
    height, width = image.shape[:2]
    side, x, y = square_window(width, height, mode)
    if mode == 'center':
        return image[y:y + side, x:x + side]
    pad_width = [(y, side - height - y), (x, side - width - x), (0, 0)]
    if mode == 'zero':
        return np.pad(image, pad_width, mode='constant', constant_values=0)
    return np.pad(image, pad_width, mode='edge')


def unsquare(square, image, mode):
    """Put a (possibly edited) ``native_square`` back into the frame of ``image``: (H, W, 3).

    ``center``: the square replaces the image's centre, the rest stays as it
    was; ``border``/``zero``: the bars are cut off.
    """
    height, width = image.shape[:2]
    side, x, y = square_window(width, height, mode)
    if square.shape[:2] != (side, side):
        raise ValueError(f'the square must be {side} x {side}, got {square.shape[:2]}')
    if mode == 'center':
        result = np.array(image, copy=True)
        result[y:y + side, x:x + side] = square
        return result
    return np.ascontiguousarray(square[y:y + height, x:x + width])


def crop_box_edge_padded(image, box):
    """Crop the inclusive box (x0, y0, x1, y1) in integer pixels; parts outside
    the image repeat its edge pixels. Returns (y1 - y0 + 1, x1 - x0 + 1, 3)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    height, width = image.shape[:2]
    rows = np.clip(np.arange(y0, y1 + 1), 0, height - 1)
    cols = np.clip(np.arange(x0, x1 + 1), 0, width - 1)
    return image[rows[:, None], cols[None, :]]


def make_square(image, size, mode):
    """Apply pad mode ``mode`` (one of PAD_MODES) for output size ``size``."""
    if mode == 'center':
        return center_crop(image, size)
    if mode == 'border':
        return border_pad(image, size)
    if mode == 'zero':
        return zero_pad(image, size)
    if mode == 'resize_small_side':
        return resize_small_side(image, size)
    if mode == 'none':
        return image
    raise ValueError(f"unknown pad mode '{mode}'; choose from {', '.join(PAD_MODES)}")
