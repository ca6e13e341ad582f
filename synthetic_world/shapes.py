"""Soft shapes: signed distances (negative inside) and the coverage they give.

Arguments broadcast against pixel tensors (N, S, S); per-image values come
as (N, 1, 1). A part's coverage of a pixel is ``coverage(-distance / ramp)``.
"""
import math

import torch


def sd_circle(x, y, cx, cy, r):
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2 + 1e-12) - r


def sd_ellipse(x, y, cx, cy, rx, ry):
    # First-order distance to the ellipse: f / |grad f| with f = |q / r|^2 - 1.
    # Exact on the boundary, -> -inf at the centre, smooth everywhere.
    dx, dy = (x - cx) / rx, (y - cy) / ry
    f = dx * dx + dy * dy - 1
    grad = 2 * torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + 1e-12)
    return f / grad


def sq_segment(x, y, ax, ay, bx, by):
    # Squared distance to the segment a-b.
    ex, ey = bx - ax, by - ay
    wx, wy = x - ax, y - ay
    h = ((wx * ex + wy * ey) / (ex * ex + ey * ey + 1e-12)).clamp(0, 1)
    return (wx - ex * h) ** 2 + (wy - ey * h) ** 2


def sd_segments(x, y, segments, radius):
    # Union of round-capped strokes of half-width ``radius`` along the segments.
    sq = sq_segment(x, y, *segments[0])
    for segment in segments[1:]:
        sq = torch.minimum(sq, sq_segment(x, y, *segment))
    return torch.sqrt(sq + 1e-12) - radius


def sd_triangle(x, y, a, b, c):
    # Exact distance to the triangle's edges, negative inside (either winding).
    sq = torch.minimum(torch.minimum(sq_segment(x, y, *a, *b), sq_segment(x, y, *b, *c)),
                       sq_segment(x, y, *c, *a))
    c0, c1, c2 = ((q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]) for p, q in ((a, b), (b, c), (c, a)))
    inside = ((c0 * c1) >= 0) & ((c1 * c2) >= 0)
    dist = torch.sqrt(sq + 1e-12)
    return torch.where(inside, -dist, dist)


def sd_rounded_box(x, y, cx, cy, half, angle, rounding):
    c, s = math.cos(angle), math.sin(angle)
    lx, ly = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    qx, qy = lx.abs() - (half - rounding), ly.abs() - (half - rounding)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2 + 1e-12)
    return outside + torch.maximum(qx, qy).clamp(max=0) - rounding


def coverage(scaled_distance):
    # sigmoid(-d / ramp). The argument is clamped so that coverage far from an
    # edge stays a normal float: products of subnormal floats are ~100x slower
    # on CPUs, in the forward and even more in the backward pass.
    return torch.sigmoid(scaled_distance.clamp(-20, 20))


def sd_oriented_box(x, y, cx, cy, half_x, half_y, angle, rounding):
    """Rounded rectangle of half-sizes (half_x, half_y) turned by ``angle`` (radians, any broadcastable tensor)."""
    c, s = torch.cos(angle), torch.sin(angle)
    lx, ly = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    qx, qy = lx.abs() - (half_x - rounding), ly.abs() - (half_y - rounding)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2 + 1e-12)
    return outside + torch.maximum(qx, qy).clamp(max=0) - rounding
