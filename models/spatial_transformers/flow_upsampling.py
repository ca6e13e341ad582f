"""Learned convex upsampling of a coarse flow field.

Each fine flow vector is a convex combination of the 3 x 3 coarse vectors
around its coarse cell, with weights predicted by the network (a softmax over
the nine neighbours), as in RAFT. The coarse flow is scaled by the factor
first, following that convention.
"""
import torch
import torch.nn.functional as F


def convex_upsample(flow, mask_logits, factor):
    """Upsample a flow by ``factor`` with learned neighbourhood weights.

    Args:
        flow: (N, h, w, 2) coarse flow.
        mask_logits: (N, 9 * factor * factor, h, w) weight logits; channel
            j * factor**2 + a * factor + b weighs neighbour j (row-major over
            the 3 x 3 window) for sub-pixel (row a, column b) of each cell.
        factor: integer upsampling factor.
    Returns:
        (N, h * factor, w * factor, 2) fine flow.
    """
    n, h, w, _ = flow.shape
    weights = mask_logits.reshape(n, 9, factor, factor, h, w).softmax(dim=1)
    neighbours = F.unfold(factor * flow.permute(0, 3, 1, 2), kernel_size=3, padding=1)
    neighbours = neighbours.reshape(n, 2, 9, h, w)
    fine = torch.einsum('njabhw,ncjhw->nhawbc', weights, neighbours)  # (N, h, f, w, f, 2)
    return fine.reshape(n, h * factor, w * factor, 2)
