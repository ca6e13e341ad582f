"""Sampling images through a warp.

``bilinear_sample`` is torch's grid_sample with the project's conventions;
``MipmapWarp`` is the anti-aliased sampler the spatial transformers use: where
the warp shrinks the image (neighbouring output pixels land far apart in the
source) it samples a pre-blurred copy of the source, so minified textures do
not alias. ``TentDownsample`` prepares the low-resolution regression input.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F

from utils.errors import UserError

PADDING_MODES = ('border', 'zeros', 'reflection')


def check_padding_mode(padding_mode):
    """Return the grid_sample name of ``padding_mode`` ('zero' is accepted for
    'zeros'); raise UserError for anything else."""
    if padding_mode == 'zero':
        return 'zeros'
    if padding_mode not in PADDING_MODES:
        raise UserError(f"unknown padding mode '{padding_mode}'; "
                        f"choose one of {', '.join(PADDING_MODES)}")
    return padding_mode


def bilinear_sample(source, grid, padding_mode='border'):
    """Bilinear sampling without anti-aliasing.

    Args:
        source: (N, C, H, W) images.
        grid: (N, Ho, Wo, 2) sampling positions, x before y, in [-1, 1]
            (align_corners=False; values outside are padded).
        padding_mode: 'border', 'zeros' or 'reflection'.
    Returns:
        (N, C, Ho, Wo) samples.
    """
    return F.grid_sample(source, grid.to(source.dtype), mode='bilinear',
                         padding_mode=check_padding_mode(padding_mode), align_corners=False)


def mipmap_levels(grid, height, width, max_level):
    """Continuous mip-map level for every output pixel of a warp.

    The level is log2 of the largest distance, in source pixels, between a
    sample position and those of its four neighbours (distances below one
    pixel count as one, so magnification stays at level 0). One normalised
    grid unit spans (size - 1) / 2 source pixels here, as in the released
    models.

    Args:
        grid: (N, Ho, Wo, 2) normalised sampling positions.
        height, width: size of the source being sampled.
        max_level: upper clamp of the level.
    Returns:
        (N, Ho, Wo) levels in [0, max_level].
    """
    half_extent = grid.new_tensor([(width - 1) / 2, (height - 1) / 2])
    coords = grid * half_extent  # source pixels, up to an offset that distances ignore
    gap_x = (coords[:, :, 1:] - coords[:, :, :-1]).pow(2).sum(-1)  # (N, Ho, Wo - 1)
    gap_y = (coords[:, 1:] - coords[:, :-1]).pow(2).sum(-1)  # (N, Ho - 1, Wo)
    # A pixel on the border has one neighbour fewer on that side; a zero gap
    # stands for it (it is clamped to one pixel below, like a repeated sample).
    farthest = torch.maximum(
        torch.maximum(F.pad(gap_x, (1, 0)), F.pad(gap_x, (0, 1))),
        torch.maximum(F.pad(gap_y, (0, 0, 1, 0)), F.pad(gap_y, (0, 0, 0, 1))))
    levels = 0.5 * torch.log2(farthest.clamp(min=1.0))
    return levels.clamp(max=max_level)


def _power_of_two_padding(size):
    """(before, after) reflection padding that brings ``size`` to a power of two."""
    target = 1 << max(size - 1, 0).bit_length()
    total = target - size
    return total // 2, total - total // 2


class MipmapWarp(nn.Module):
    """Anti-aliased warping with a Gaussian stack (a mip-map kept at full size).

    Level l of the stack is the source blurred and halved l times with a
    [1, 3, 3, 1] binomial filter, then bilinearly enlarged back to the source
    size. Each output pixel is sampled from the two levels around its
    continuous level (see ``mipmap_levels``) and linearly blended.

    Args:
        max_num_levels: levels are clamped to ``max_num_levels - 1``.
    """

    def __init__(self, max_num_levels=3.5):
        super().__init__()
        self.max_num_levels = max_num_levels
        taps = torch.tensor([1., 3., 3., 1.])
        blur = taps[:, None] * taps[None, :]
        self.register_buffer('blur_filter', (blur / blur.sum())[None, None])

    def _halve(self, images):
        """Blur and subsample by two: (N, C, H, W) -> (N, C, H / 2, W / 2)."""
        channels = images.shape[1]
        kernel = self.blur_filter.to(images.dtype).expand(channels, 1, 4, 4)
        return F.conv2d(F.pad(images, (1, 1, 1, 1), mode='reflect'), kernel, stride=2,
                        groups=channels)

    def gaussian_stack(self, source, num_levels):
        """(N, C, H, W) -> (N, C, num_levels, H, W); level 0 is ``source`` itself."""
        height, width = source.shape[-2:]
        top, bottom = _power_of_two_padding(height)
        left, right = _power_of_two_padding(width)
        # Halving is exact only on power-of-two sizes, so pad first and crop after.
        padded = source
        if top or bottom or left or right:
            padded = F.pad(source, (left, right, top, bottom), mode='reflect')
        levels = [padded]
        current = padded
        for _ in range(1, num_levels):
            current = self._halve(current)
            levels.append(F.interpolate(current, size=padded.shape[-2:], mode='bilinear',
                                        align_corners=False))
        stack = torch.stack(levels, dim=2)
        return stack[..., top:top + height, left:left + width]

    def forward(self, source, grid, padding_mode='border'):
        """Warp ``source`` (N, C, H, W) with ``grid`` (N, Ho, Wo, 2) -> (N, C, Ho, Wo)."""
        padding_mode = check_padding_mode(padding_mode)
        n, channels, height, width = source.shape
        grid = grid.to(source.dtype)
        levels = mipmap_levels(grid, height, width, self.max_num_levels - 1.0)
        # Each halving needs at least two pixels to reflect-pad.
        most_levels = int(math.log2(max(min(height, width), 1))) + 1
        # nan_to_num/clamp: diverged warps must reach the trainer's non-finite check, not crash here.
        num_levels = min(int(levels.max().nan_to_num(0.0).clamp(max=most_levels).ceil().item()) + 1, most_levels)
        if num_levels == 1:
            return F.grid_sample(source, grid, mode='bilinear', padding_mode=padding_mode,
                                 align_corners=False)
        stack = self.gaussian_stack(source, num_levels)
        sampled = F.grid_sample(stack.reshape(n, channels * num_levels, height, width), grid,
                                mode='bilinear', padding_mode=padding_mode, align_corners=False)
        sampled = sampled.reshape(n, channels, num_levels, *grid.shape[1:3])
        # Linear interpolation between the two levels around each continuous level.
        level_ids = torch.arange(num_levels, device=source.device, dtype=levels.dtype)
        weights = (1 - (levels[:, None] - level_ids[None, :, None, None]).abs()).clamp(min=0)
        return (sampled * weights[:, None]).sum(dim=2)


class PlainWarp(nn.Module):
    """Bilinear warping without anti-aliasing (same interface as MipmapWarp)."""

    def forward(self, source, grid, padding_mode='border'):
        """Warp ``source`` (N, C, H, W) with ``grid`` (N, Ho, Wo, 2) -> (N, C, Ho, Wo)."""
        return bilinear_sample(source, grid, padding_mode)


def tent_taps(factor):
    """1D tent filter for downsampling by ``factor``: 2 * factor taps summing to 1."""
    ramp = torch.arange(1, 2 * factor, 2, dtype=torch.float32)
    taps = torch.cat([ramp, ramp.flip(0)])
    return taps / taps.sum()


def tent_downsample(images, factor, kernel_horz=None, kernel_vert=None):
    """Separable tent-filter downsampling by an even integer ``factor``.

    Args:
        images: (N, C, H, W) with H and W multiples of ``factor``.
        kernel_horz, kernel_vert: optional (C, 1, 1, 2f) / (C, 1, 2f, 1) kernels
            (built from ``tent_taps`` when omitted).
    Returns:
        (N, C, H / factor, W / factor).
    """
    channels = images.shape[1]
    if kernel_horz is None:
        taps = tent_taps(factor).to(images.device)
        kernel_horz = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        kernel_vert = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    pad = factor // 2
    out = F.pad(images, (pad, pad, pad, pad), mode='reflect')
    out = F.conv2d(out, kernel_horz.to(images.dtype), stride=(1, factor), groups=channels)
    return F.conv2d(out, kernel_vert.to(images.dtype), stride=(factor, 1), groups=channels)


class TentDownsample(nn.Module):
    """Tent-filter downsampling of RGB images by a fixed even ``factor``.

    Its kernels are buffers (``kernel_horz`` (C, 1, 1, 2f), ``kernel_vert``
    (C, 1, 2f, 1)) because official checkpoints store them.
    """

    def __init__(self, factor, channels=3):
        super().__init__()
        self.factor = factor
        taps = tent_taps(factor)
        self.register_buffer('kernel_horz', taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1))
        self.register_buffer('kernel_vert', taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1))

    def forward(self, images):
        """(N, C, H, W) -> (N, C, H / factor, W / factor)."""
        return tent_downsample(images, self.factor, self.kernel_horz, self.kernel_vert)
