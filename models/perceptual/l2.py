"""``--loss_fn l2``: plain per-sample mean squared error (no weights needed)."""
import torch.nn as nn

from models.perceptual import PERCEPTUAL_LOSSES


class MeanSquaredDistance(nn.Module):
    """``forward(a, b)``: images (N, C, H, W) -> (N,) mean of (a - b)**2 per sample."""

    def forward(self, a, b):
        if a.shape != b.shape:
            raise ValueError(f'expected two batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}')
        return (a - b).pow(2).flatten(1).mean(1)


@PERCEPTUAL_LOSSES.register('l2')
class L2Loss:
    """Mean squared pixel error per sample."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        return parser

    @staticmethod
    def build(opt):
        return MeanSquaredDistance().eval()
