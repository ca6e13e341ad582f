"""Gaussian splatting entry points: raw accumulation and blended overlays.

Splatting is a soft scatter: each point deposits its value onto the pixels
around it with Gaussian weights, which handles sub-pixel positions and fills
the small gaps left when a dense label is pushed through a warp. The work is
done by the vectorised native implementation (ops.splat_native), which runs
on the CPU and, unchanged, on CUDA tensors.
"""
import torch

from ops.blend import blend
from ops.splat_native import gaussian_splat_native


def gaussian_splat(points, values, sigma, height, width, normalize_footprint=False):
    """Sum Gaussian footprints of points: see ops.splat_native.gaussian_splat_native.

    Args:
        points: (N, P, 2) pixel coordinates (x, y); points outside
            [0, width) x [0, height) are ignored.
        values: (N, P, C) values carried by the points.
        sigma: positive float or (N,) tensor, footprint standard deviation in pixels.
        height, width: output size.
        normalize_footprint: if True each point's weights sum to 1 (mass conserved).
    Returns:
        (accumulated (N, C, H, W), weights (N, 1, H, W)).
    """
    return gaussian_splat_native(points, values, sigma, height, width, normalize_footprint)


def splat_points(images, points, sigma, opacity, colors, alpha_channel=None, blend_alg='alpha', eps=1e-8):
    """Overlay coloured points on images by Gaussian splatting and blending.

    The overlay colour at a pixel is the weight-averaged colour of the points
    reaching it; its coverage is the sum of weight * alpha divided by
    max(1, sum of weights), so a densely covered pixel becomes fully covered
    and an isolated point fades out with distance. With ``blend_alg='alpha'``
    the result is ``coverage * opacity * colour + (1 - coverage * opacity) * image``;
    the Laplacian algorithms (ops.blend) mix the overlay (the image itself
    where no point reaches) with the same mask band by band.

    Args:
        images: (N, C, H, W) images in [-1, 1].
        points: (N, P, 2) pixel coordinates (x, y), sub-pixel allowed; points
            outside the image are ignored.
        sigma: positive float or (N,) tensor, splat size in pixels.
        opacity: float in [0, 1], scales the coverage.
        colors: (N, P, C) or (1, P, C) point colours in [-1, 1].
        alpha_channel: optional (N, P, 1) or (1, P, 1) per-point alpha in [0, 1]
            (default: 1 for every point).
        blend_alg: 'alpha', 'laplacian' or 'laplacian_light' (ops.blend.BLEND_ALGORITHMS).
    Returns:
        (N, C, H, W) blended images, same dtype as ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f'images must be (N, C, H, W), got {tuple(images.shape)}')
    batch, channels, height, width = images.shape
    if points.dim() != 3 or points.size(0) != batch:
        raise ValueError(f'points must be (N, P, 2) with N = {batch}, got {tuple(points.shape)}')
    num_points = points.size(1)
    colors = colors.to(images.dtype).expand(batch, num_points, channels)
    if alpha_channel is None:
        alpha_channel = images.new_ones(batch, num_points, 1)
    alpha_channel = alpha_channel.to(images.dtype).expand(batch, num_points, 1)
    # One pass for colour and alpha: both are channels carried by the points.
    carried = colors.new_empty(batch, num_points, channels + 1)
    carried[..., :channels] = colors
    carried[..., channels:] = alpha_channel
    accumulated, weights = gaussian_splat(points, carried, sigma, height, width)
    colour = accumulated[:, :channels] / (weights + eps)
    coverage = accumulated[:, channels:] / weights.clamp_min(1.0)
    mask = (coverage * opacity).clamp(0, 1)
    if blend_alg == 'alpha':
        return mask * colour + (1 - mask) * images
    # Band-wise blending sees the overlay's surroundings: there it is the image itself.
    overlay = torch.where(weights > eps, colour, images)
    return blend(images, overlay, mask, blend_alg)
