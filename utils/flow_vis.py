"""Colour-coding of dense flow fields for visualisation."""
import math

import torch


def flow_to_rgb(flow, max_magnitude=None):
    """Colour-code a flow field: hue = direction, saturation = magnitude.

    Args:
        flow: (N, H, W, 2) displacement (any unit, x before y).
        max_magnitude: magnitude mapped to full saturation; per-batch maximum if None.
    Returns:
        (N, 3, H, W) RGB in [0, 1].
    """
    u, v = flow[..., 0], flow[..., 1]
    magnitude = torch.sqrt(u ** 2 + v ** 2)
    if max_magnitude is None:
        max_magnitude = magnitude.max().clamp_min(1e-8)
    hue = (torch.atan2(-v, -u) / math.pi + 1) / 2  # [0, 1]
    saturation = (magnitude / max_magnitude).clamp(0, 1)
    return hsv_to_rgb(hue, saturation, torch.ones_like(hue))


def hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB for tensors of equal shape (N, H, W) in [0, 1]; returns (N, 3, H, W)."""
    h6 = (h % 1.0) * 6
    k = torch.stack([(5 + h6) % 6, (3 + h6) % 6, (1 + h6) % 6], dim=1)  # (N, 3, H, W)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * ramp
