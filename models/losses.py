"""The GANgealing objective as pure functions of tensors.

Loss = perceptual(T(x), y) + tv_weight * TV(delta_flow)
       + flow_identity_weight * mean(delta_flow ** 2)

``delta_flow`` is the spatial transformer's residual flow (N, H, W, 2): an
offset added to the identity sampling grid, in normalised grid units
([-1, 1] spans the image). Both regularisers act on it directly.

Clustering (``num_heads > 1``) and mirrors (``flips``): every head warps every
input (and its mirror), and each input keeps only its best (head, mirror).
Per-pair tensors (distances, flows, warped images) are laid out mirror-major,
then image, then head: entry ``(m * N + n) * num_heads + k`` is input n,
mirrored when m = 1, warped by head k. An input's assignment index is
``m * num_heads + k``.
"""
from typing import NamedTuple

import torch

from models.spatial_transformers.warp_checks import flow_total_variation

class LossTerms(NamedTuple):
    """Scalar parts of the objective; ``total`` is what gets back-propagated."""
    total: torch.Tensor
    perceptual: torch.Tensor
    total_variation: torch.Tensor
    flow_identity: torch.Tensor


def total_variation_loss(delta_flow, reduce_batch=True):
    """Smooth-L1 (Huber, threshold 1) total variation of a flow field (the TV regulariser).

    Args:
        delta_flow: (N, H, W, 2) residual flow.
        reduce_batch: average over the batch too (scalar) or keep it ((N,)).
    Returns:
        mean Huber of vertical neighbour differences + mean Huber of horizontal
        ones (each averaged over positions and both flow components); the same
        measure the transformer uses to compare flows (``flow_total_variation``).
    """
    if delta_flow.dim() != 4 or delta_flow.shape[-1] != 2:
        raise ValueError(f'expected a flow of shape (N, H, W, 2), got {tuple(delta_flow.shape)}')
    per_sample = flow_total_variation(delta_flow)
    return per_sample.mean() if reduce_batch else per_sample


def flow_identity_loss(delta_flow, reduce_batch=True):
    """Mean squared residual flow (pulls the flow towards the identity warp).

    Args:
        delta_flow: (N, H, W, 2). Returns a scalar, or (N,) without ``reduce_batch``.
    """
    squared = delta_flow.pow(2)
    return squared.mean() if reduce_batch else squared.flatten(1).mean(1)


def _with_regularisers(perceptual, delta_flow, tv_weight, flow_identity_weight):
    zero = perceptual.new_zeros(())
    tv = identity = zero
    if delta_flow is not None:
        if tv_weight > 0:
            tv = total_variation_loss(delta_flow)
        if flow_identity_weight > 0:
            identity = flow_identity_loss(delta_flow)
    total = perceptual + tv_weight * tv + flow_identity_weight * identity
    return LossTerms(total, perceptual, tv, identity)


def nearest_cluster(distances, batch, num_heads, flips=False):
    """Each input's best (mirror, head): the argmin of its distances.

    Args:
        distances: ((1 + flips) * batch * num_heads,) per-pair distances in the
            mirror, image, head layout (see the module docstring).
        batch: number of inputs N.
        num_heads: number of clusters K.
        flips: whether mirrored inputs were tried too.
    Returns:
        (values (N,) the smallest distance of each input,
         indices (N,) long in [0, (1 + flips) * K): mirror * K + head).
    """
    expected = (1 + int(flips)) * batch * num_heads
    if distances.numel() != expected:
        raise ValueError(f'expected {expected} distances ((1 + flips) * batch * num_heads), got {distances.numel()}')
    per_input = distances.reshape(1 + int(flips), batch, num_heads).transpose(0, 1).reshape(batch, -1)
    values, indices = per_input.min(dim=1)
    return values, indices


def cluster_assignments(distances, batch, num_heads, flips=False):
    """Mean of each input's smallest distance and the chosen indices.

    Same arguments as ``nearest_cluster``. Returns (scalar loss, indices (N,)).
    Only the chosen pair of each input receives gradient.
    """
    values, indices = nearest_cluster(distances, batch, num_heads, flips)
    return values.mean(), indices


def select_assigned(per_pair, indices, batch, num_heads, flips=False):
    """Pick each input's assigned entry from a per-pair tensor.

    Args:
        per_pair: ((1 + flips) * batch * num_heads, ...) in the mirror, image,
            head layout (flows, warped images, distances, ...).
        indices: (N,) assignment indices from ``nearest_cluster``.
    Returns:
        (N, ...) the entries of the chosen (mirror, head) of every input.
    """
    rest = per_pair.shape[1:]
    per_input = per_pair.reshape(1 + int(flips), batch, num_heads, *rest).transpose(0, 1)
    per_input = per_input.reshape(batch, (1 + int(flips)) * num_heads, *rest)
    return per_input[torch.arange(batch, device=per_pair.device), indices.to(per_pair.device)]


def gangealing_cluster_loss(distances, delta_flow, batch, num_heads, flips, tv_weight, flow_identity_weight):
    """The clustering (and/or mirrored) objective.

    Each input keeps its smallest distance over heads (and mirrors); only the
    flow of that chosen pair is regularised.

    Args:
        distances: ((1 + flips) * batch * num_heads,) per-pair distances.
        delta_flow: ((1 + flips) * batch * num_heads, H, W, 2) per-pair
            residual flows in the same layout, or None (similarity only).
        batch, num_heads, flips: the layout (see ``nearest_cluster``).
        tv_weight, flow_identity_weight: regulariser weights.
    Returns:
        (LossTerms of scalars, assignment indices (N,)).
    """
    perceptual, indices = cluster_assignments(distances, batch, num_heads, flips)
    if delta_flow is not None:
        delta_flow = select_assigned(delta_flow, indices, batch, num_heads, flips)
    return _with_regularisers(perceptual, delta_flow, tv_weight, flow_identity_weight), indices
