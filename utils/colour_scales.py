"""Named colour scales for propagated labels: evenly spaced anchors, linear in between.

A label without colours of its own gets one colour per pixel along a scale,
in raster order, so neighbouring label pixels get neighbouring colours and a
correspondence can be followed by eye. Unimodal models use ``turbo``; the
clusters of a clustering model use ``plasma``, ``plotly3``, ``viridis`` and
``cividis`` in that order (as the original GANgealing tools do), so several
clusters shown at once stay apart.
"""
import torch

# RGB anchors (0-255) at evenly spaced positions from 0 to 1.
SCALES = {
    'turbo': ((48, 18, 59), (70, 107, 227), (40, 188, 235), (50, 241, 152), (164, 252, 60),
              (238, 205, 58), (251, 128, 34), (208, 47, 5), (122, 4, 3)),
    'plasma': ((13, 8, 135), (126, 3, 168), (204, 71, 120), (248, 149, 64), (240, 249, 33)),
    'plotly3': ((5, 8, 184), (60, 25, 240), (152, 28, 253), (221, 43, 253), (252, 103, 253),
                (254, 165, 253), (254, 195, 254)),
    'viridis': ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
    'cividis': ((0, 34, 78), (65, 77, 108), (124, 123, 120), (187, 175, 113), (255, 234, 70)),
}
UNIMODAL_SCALE = 'turbo'
CLUSTER_SCALES = ('plasma', 'plotly3', 'viridis', 'cividis')


def scale_for_cluster(cluster=None):
    """The scale's name for ``cluster`` (None: a unimodal model); clusters past
    the listed scales share the unimodal one."""
    if cluster is None or not 0 <= int(cluster) < len(CLUSTER_SCALES):
        return UNIMODAL_SCALE
    return CLUSTER_SCALES[int(cluster)]


def scale_colours(name, count, device=None):
    """``count`` colours evenly spread along scale ``name``: (count, 3) in [-1, 1]."""
    if name not in SCALES:
        raise ValueError(f"unknown colour scale '{name}'; choose from {', '.join(SCALES)}")
    anchors = torch.tensor(SCALES[name], dtype=torch.float32, device=device) / 127.5 - 1
    position = torch.linspace(0, len(anchors) - 1, count, device=device)
    low = position.floor().long().clamp(max=len(anchors) - 2)
    frac = (position - low).unsqueeze(1)
    return anchors[low] * (1 - frac) + anchors[low + 1] * frac
