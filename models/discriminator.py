"""StyleGAN2 residual discriminator in the state-dict layout of rosinality's checkpoints.

Module tree: ``convs.0`` (1x1 from RGB), ``convs.1..`` residual blocks halving
the resolution down to 4 x 4, then a minibatch standard-deviation feature,
``final_conv`` (3x3) and ``final_linear`` (two equalised linear layers), so
a ``d`` entry written by ``train_stylegan2.py`` loads into rosinality's
``Discriminator`` of the same size and width and the reverse.
"""
import math
from collections import OrderedDict

import torch
from torch import nn

from models.layers import ConvLayer, EqualLinear, ResBlock
from models.stylegan2 import CHANNEL_MAX, channel_table
from utils.errors import UserError, WeightsMismatchError

__all__ = ['Discriminator', 'minibatch_stddev', 'discriminator_config_from_state_dict']

STDDEV_GROUP = 4  # samples per group of the standard-deviation feature (rosinality's default)


def _largest_divisor_at_most(n, limit):
    for group in range(min(n, limit), 0, -1):
        if n % group == 0:
            return group
    return 1


def minibatch_stddev(x, group_size=STDDEV_GROUP):
    """Append the minibatch standard deviation as one feature map.

    Samples are split into groups of ``group_size`` (the largest divisor of
    the batch not above it, so any batch works); each sample gets its group's
    standard deviation over the group, averaged over channels and pixels.

    Args:
        x: (N, C, H, W) features.
    Returns:
        (N, C + 1, H, W).
    """
    n, c, h, w = x.shape
    group = _largest_divisor_at_most(n, group_size)
    grouped = x.view(group, n // group, c, h, w)  # sample i belongs to group i % (n // group)
    std = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (n // group, C, H, W)
    feature = std.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)  # (n // group, 1, 1, 1)
    feature = feature.repeat(group, 1, h, w)
    return torch.cat([x, feature], dim=1)


class Discriminator(nn.Module):
    """Real/fake logits for images (N, 3, size, size) in [-1, 1] -> (N, 1).

    Args:
        size: input resolution, a power of two in [4, 1024].
        channel_multiplier: width multiplier of resolutions >= 64 (as the generator's).
        channel_max: cap on every width (as the generator's ``channel_max``).
        blur_kernel: 1D FIR taps of the downsampling filters.
    """

    def __init__(self, size, channel_multiplier=2, channel_max=CHANNEL_MAX, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        log_size = math.log2(size) if size > 0 else -1
        if log_size != int(log_size) or not 2 <= log_size <= 10:
            raise UserError(f'discriminator size must be a power of two from 4 to 1024, got {size}')
        self.size, self.channel_multiplier = size, channel_multiplier
        channels = channel_table(channel_multiplier, channel_max)
        self.channels = channels
        convs = [ConvLayer(3, channels[size], 1)]
        in_ch = channels[size]
        for log_res in range(int(log_size), 2, -1):
            out_ch = channels[2 ** (log_res - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.final_conv = ConvLayer(in_ch + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation='fused_lrelu'),
            EqualLinear(channels[4], 1))

    def config(self):
        """The constructor arguments that decide the state-dict shapes."""
        return OrderedDict(size=self.size, channels=self.channels[self.size], channel_max=self.channels[4])

    def forward(self, x):
        out = minibatch_stddev(self.convs(x))
        out = self.final_conv(out)
        return self.final_linear(out.flatten(1))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict`` that names both configurations on a mismatch
        (WeightsMismatchError) instead of listing tensor shapes."""
        found = discriminator_config_from_state_dict(state_dict)
        if found != self.config():
            raise WeightsMismatchError(
                'the discriminator weights are for size={size}, input width={channels}, '
                'channel_max={channel_max}'.format(**found)
                + ', but the model was built with size={size}, input width={channels}, '
                  'channel_max={channel_max}'.format(**self.config()))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def discriminator_config_from_state_dict(state_dict):
    """size, width at the input and width at 4 x 4 of a discriminator state dict.

    Raises UserError when the mapping is not one.
    """
    if 'convs.0.0.weight' not in state_dict or 'final_conv.0.weight' not in state_dict:
        raise UserError('the discriminator weights are not a StyleGAN2 discriminator state dict '
                        '(no convs.0.0.weight / final_conv.0.weight)')
    n_blocks = sum(1 for k in state_dict if k.endswith('.conv1.0.weight') and k.startswith('convs.'))
    return OrderedDict(size=2 ** (n_blocks + 2), channels=state_dict['convs.0.0.weight'].shape[0],
                       channel_max=state_dict['final_conv.0.weight'].shape[0])
