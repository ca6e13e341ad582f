"""Matching per-image tensors to the rows a spatial transformer produces.

With several cluster heads one input image becomes several output rows
(image-major: rows n * K .. n * K + K - 1 belong to image n). Per-image
arguments (alpha, points, bounds, head choices) are repeated to match.
"""
import torch
from torch import nn

from utils.errors import UserError


def repeat_rows(tensor, rows, what='tensor'):
    """Repeat each entry of ``tensor`` (M, ...) so that it has ``rows`` entries.

    ``rows`` must be a multiple of M (rows of one image are consecutive).
    """
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] == 0 or rows % tensor.shape[0]:
        raise UserError(f'{what} has {tensor.shape[0]} entries but the spatial transformer '
                        f'produced {rows} rows; give one entry per input image')
    return tensor.repeat_interleave(rows // tensor.shape[0], dim=0)


def alpha_per_row(alpha, rows, reference):
    """Warp strength for each output row, or None.

    Args:
        alpha: None, a number, a 0-d tensor or an (M,) tensor with M dividing
            ``rows``; 0 = identity warp, 1 = the predicted warp.
        rows: number of output rows.
        reference: tensor whose device and dtype the result takes.
    Returns:
        None or a (rows,) tensor.
    """
    if alpha is None:
        return None
    alpha = torch.as_tensor(alpha, device=reference.device, dtype=reference.dtype)
    if alpha.dim() == 0:
        return alpha.expand(rows)
    return repeat_rows(alpha.reshape(-1), rows, 'alpha')


def resolve_warp_policy(warp_policy, num_heads, images):
    """Turn a warp policy into per-image head indices, or None for 'cartesian'.

    Args:
        warp_policy: 'cartesian' (every head warps every image), an (N,)
            integer tensor of head indices, an (N, S) tensor of scores (the
            head is argmax % num_heads, so scores over heads and their mirrors
            work too), or an nn.Module mapping ``images`` to such scores.
        num_heads: number of cluster heads.
        images: (N, C, H, W) input images.
    Returns:
        None or an (N,) long tensor of head indices in [0, num_heads).
    """
    if isinstance(warp_policy, str):
        if warp_policy != 'cartesian':
            raise UserError(f"unknown warp policy '{warp_policy}'; use 'cartesian', per-image "
                            f"head indices, per-image head scores or a classifier")
        return None
    if isinstance(warp_policy, nn.Module):
        warp_policy = warp_policy(images)
    if not torch.is_tensor(warp_policy):
        raise UserError(f'warp_policy must be a string, a tensor or a module, '
                        f'got {type(warp_policy).__name__}')
    if warp_policy.dim() == 2:
        return warp_policy.argmax(dim=1) % num_heads
    if warp_policy.dim() == 1 and not warp_policy.is_floating_point():
        if warp_policy.numel() and (warp_policy.min() < 0 or warp_policy.max() >= num_heads):
            raise UserError(f'head indices must lie in [0, {num_heads - 1}]')
        return warp_policy.long()
    raise UserError('a tensor warp_policy must be (N,) integer head indices or (N, S) scores, '
                    f'got shape {tuple(warp_policy.shape)} ({warp_policy.dtype})')
