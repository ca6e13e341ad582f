"""Smooth per-face deformations: a non-rigid factor for the dense flow stage to undo.

A face's deformation moves the point it draws at frame position f (object
coordinates, after the mirror sign; see ``drawing._object_coordinates``) by a
smooth displacement:

    drawn(f) = f + d(f),   d_x(f) = sum_k a_k b_k(f),   d_y(f) = sum_k a_(4+k) b_k(f)

with four low-frequency basis functions over the object box
(``b = sin(pi x / 2), sin(pi y / 2), sin(pi x / 2) sin(pi y / 2),
cos(pi x / 2) cos(pi y / 2)``): a horizontal and a vertical stretch, a shear
of the corners and a bulge of the middle, per axis. Coefficients ``a`` (N, 8)
lie in [-D, D] for the world's ``deformation`` D; each basis function's slope
is at most pi / 2, so the displacement's slope is at most ``2 pi D`` and the
map f -> f + d(f) stays invertible for D below 1 / (2 pi) (``MAX_DEFORMATION``
keeps a margin so that keypoints invert quickly).

The whole scene in the face's frame (face and background) is deformed, as a
rubber sheet: the displacement is smooth everywhere, so a flow can undo it.
"""
import math

import torch

DEFORMATION_FACTORS = 8     # coefficients per face: 4 basis functions x 2 axes
MAX_DEFORMATION = 0.12      # slope bound 2 pi D = 0.75 < 1: invertible, inverse by fixed point
_INVERSE_STEPS = 40         # fixed-point steps of the inverse: 0.75 ** 40 < 1e-5


def _basis(x, y):
    # (..., 4) basis functions at frame positions x, y (same shapes).
    sx, sy = torch.sin(0.5 * math.pi * x), torch.sin(0.5 * math.pi * y)
    cx, cy = torch.cos(0.5 * math.pi * x), torch.cos(0.5 * math.pi * y)
    return torch.stack([sx, sy, sx * sy, cx * cy], dim=-1)


def displacement(x, y, coefficients):
    """The displacement d at frame positions.

    Args:
        x, y: (N, ...) frame positions (any trailing shape, the same for both).
        coefficients: (N, DEFORMATION_FACTORS) deformation coefficients.
    Returns:
        (dx, dy), each shaped like ``x``.
    """
    basis = _basis(x, y)
    a = coefficients.reshape(coefficients.shape[0], *([1] * (x.dim() - 1)), 2, 4)
    return (basis * a[..., 0, :]).sum(-1), (basis * a[..., 1, :]).sum(-1)


def deform(x, y, coefficients):
    """Frame positions -> the positions of the canonical face drawn there (f + d(f))."""
    dx, dy = displacement(x, y, coefficients)
    return x + dx, y + dy


def undeform(points, coefficients):
    """Where the deformed face shows the canonical points: solves f + d(f) = q.

    Args:
        points: (N, P, 2) canonical frame positions q.
        coefficients: (N, DEFORMATION_FACTORS), each within MAX_DEFORMATION.
    Returns:
        (N, P, 2) frame positions f (f = q where the coefficients are zero).
    """
    x, y = points[..., 0], points[..., 1]
    fx, fy = x, y
    for _ in range(_INVERSE_STEPS):  # a contraction: the displacement's slope is at most 0.75
        dx, dy = displacement(fx, fy, coefficients)
        fx, fy = x - dx, y - dy
    return torch.stack([fx, fy], dim=-1)
