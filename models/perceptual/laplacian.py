"""``--loss_fn laplacian``: L1 over a Laplacian pyramid (weight-free, works offline).

The pyramid splits an image into band-pass levels (finest first) and a low-pass
residual. The distance is a weighted sum of the per-level mean absolute
differences, with coarser levels weighted more (weight 2**level, normalised to
sum 1): for alignment, a misplaced silhouette should cost more than a
misplaced texture detail. The pyramid is linear, so it is built once, from
``a - b``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.perceptual import PERCEPTUAL_LOSSES
from utils.argparse_tools import has_option
from utils.errors import UserError

DEFAULT_LEVELS = 5
_MIN_COARSEST_SIZE = 4  # the 5-tap blur needs a few pixels to reflect


def _binomial_blur(images):
    """Separable [1, 4, 6, 4, 1] / 16 blur of (N, C, H, W) with reflected borders."""
    channels = images.shape[1]
    taps = images.new_tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    horizontal = taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5)
    vertical = taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1)
    images = F.conv2d(F.pad(images, (2, 2, 0, 0), mode='reflect'), horizontal, groups=channels)
    return F.conv2d(F.pad(images, (0, 0, 2, 2), mode='reflect'), vertical, groups=channels)


def laplacian_pyramid(images, levels):
    """Band-pass levels of (N, C, H, W) images, finest first, then the low-pass residual.

    Returns a list of at most ``levels`` tensors: level l has about H / 2**l rows.
    Fewer levels are made when the image is too small to halve again.
    """
    pyramid, current = [], images
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 2 * _MIN_COARSEST_SIZE:
            break
        smaller = _binomial_blur(current)[:, :, ::2, ::2]
        expanded = F.interpolate(smaller, size=current.shape[-2:], mode='bilinear', align_corners=False)
        pyramid.append(current - expanded)
        current = smaller
    pyramid.append(current)
    return pyramid


class LaplacianPyramidDistance(nn.Module):
    """``forward(a, b)``: images (N, C, H, W) -> (N,) weighted per-level mean |difference|.

    Args:
        levels: number of pyramid levels (band-pass levels + the residual).
    """

    def __init__(self, levels=DEFAULT_LEVELS):
        super().__init__()
        if levels < 1:
            raise ValueError(f'levels must be at least 1, got {levels}')
        self.levels = levels

    def forward(self, a, b):
        if a.shape != b.shape or a.dim() != 4:
            raise ValueError(f'expected two image batches of one shape (N, C, H, W), got '
                             f'{tuple(a.shape)} and {tuple(b.shape)}')
        pyramid = laplacian_pyramid(a - b, self.levels)
        weights = [2.0 ** level for level in range(len(pyramid))]
        total = sum(weights)
        per_level = torch.stack([band.abs().flatten(1).mean(1) for band in pyramid], 1)  # (N, levels)
        return per_level @ per_level.new_tensor([w / total for w in weights])


@PERCEPTUAL_LOSSES.register('laplacian')
class LaplacianLoss:
    """L1 over a Laplacian pyramid; no weights to download."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        if not has_option(parser, '--laplacian_levels'):
            parser.add_argument('--laplacian_levels', type=int, default=DEFAULT_LEVELS,
                                help='levels of the Laplacian pyramid of the laplacian loss')
        return parser

    @staticmethod
    def build(opt):
        levels = getattr(opt, 'laplacian_levels', DEFAULT_LEVELS)
        if levels < 1:
            raise UserError(f'--laplacian_levels must be at least 1, got {levels}')
        return LaplacianPyramidDistance(levels).eval()
