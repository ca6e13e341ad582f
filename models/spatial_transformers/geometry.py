"""Warp geometry: similarity matrices, affine composition, identity grids and
the mapping between pixel coordinates and normalised grid coordinates.

Grids are (N, H, W, 2), x before y, in [-1, 1] with align_corners=False, so
pixel p of an S-pixel axis sits at (2p + 1) / S - 1.
"""
import math

import torch
import torch.nn.functional as F


def similarity_matrices(params):
    """Affine matrices of similarity warps from raw regressed parameters.

    Args:
        params: (..., 4) raw (rotation, log-scale, shift_x, shift_y); the
            rotation angle is tanh(r) * pi, the scale exp(s).
    Returns:
        (..., 2, 3) matrices [[s cos, -s sin, tx], [s sin, s cos, ty]] mapping
        output grid positions to source grid positions.
    """
    angle = torch.tanh(params[..., 0]) * math.pi
    scale = torch.exp(params[..., 1])
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    rows = torch.stack([cos, -sin, params[..., 2], sin, cos, params[..., 3]], dim=-1)
    return rows.reshape(*params.shape[:-1], 2, 3)


def to_homogeneous(matrix):
    """(..., 2, 3) affine matrices -> (..., 3, 3) with a last row [0, 0, 1]."""
    last_row = torch.zeros_like(matrix[..., :1, :])
    last_row[..., 0, 2] = 1
    return torch.cat([matrix, last_row], dim=-2)


def compose_affine(outer, inner):
    """Affine matrix of ``outer(inner(x))``: (..., 2, 3) x (..., 2, 3) -> (..., 2, 3)."""
    return outer @ to_homogeneous(inner)


def invert_affine(matrix):
    """Inverse of (..., 2, 3) affine matrices, as (..., 2, 3)."""
    return torch.linalg.inv(to_homogeneous(matrix))[..., :2, :]


def apply_affine(matrix, positions):
    """Apply (N, 2, 3) matrices to positions (N, ..., 2) -> (N, ..., 2)."""
    shape = positions.shape
    flat = positions.reshape(shape[0], -1, 2)
    moved = flat @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
    return moved.reshape(shape)


def identity_grid(size, batch=1, device=None, dtype=torch.float32):
    """Identity sampling grid (batch, size, size, 2) (align_corners=False)."""
    eye = torch.eye(2, 3, device=device, dtype=dtype).expand(batch, 2, 3)
    return F.affine_grid(eye, (batch, 1, size, size), align_corners=False)


def resize_grid(grid, size):
    """Bilinearly resize a sampling grid (N, H, W, 2) -> (N, size, size, 2).

    Resizing the warp instead of the warped image keeps the output sharp.
    """
    if grid.shape[1] == size and grid.shape[2] == size:
        return grid
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(size, size), mode='bilinear',
                            align_corners=False)
    return resized.permute(0, 2, 3, 1)


def normalize_points(points, res, out_res):
    """Pixel coordinates in [0, out_res - 1] -> normalised coordinates.

    The result is (2 p / (out_res - 1) - 1) * (res - 1) / res; with
    res == out_res == S this is the align_corners=False position
    (2 p + 1) / S - 1 of pixel p. Keypoint transfer of the released models
    uses the two-resolution form, so it is kept as is.
    """
    return (points / (out_res - 1) - 0.5) * 2 * ((res - 1) / res)


def unnormalize_points(points, res, out_res):
    """Inverse of ``normalize_points``: normalised -> pixel coordinates in [0, out_res - 1]."""
    return (points / ((res - 1) / res) / 2 + 0.5) * (out_res - 1)


def convert_points(points, current_res, target_res):
    """Rescale pixel coordinates from [0, current_res - 1] to [0, target_res - 1]
    (first and last pixels map onto each other)."""
    return unnormalize_points(normalize_points(points, target_res, current_res),
                              target_res, target_res)
