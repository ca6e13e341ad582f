"""The convolutional trunk that regresses warp features from a flow_size image.

A 1x1 convolution to RGB features, then residual blocks that halve the
resolution: down to 4 x 4 for a similarity transformer (followed by a fully
connected layer), or three halvings plus one same-size block for a flow
transformer (features at flow_size / 8).
"""
import math

from torch import nn

from models.layers import ConvLayer, EqualLinear, ResBlock


def stn_channels(resolution, channel_multiplier, max_channels=512):
    """Channels of the trunk at a feature resolution.

    ``max_channels`` at 32 x 32 and below; above, 16384 / resolution times
    ``channel_multiplier`` (256 * m at 64, 128 * m at 128, ...), capped at
    ``max_channels``.
    """
    if resolution <= 32:
        return max_channels
    return int(min(16384 * channel_multiplier / resolution, max_channels))


class SameSizeResBlock(nn.Module):
    """Residual block that keeps the resolution: (N, in_ch, H, W) -> (N, out_ch, H, W).

    Same children as models.layers.ResBlock (conv1, conv2, skip) without the
    blur-and-stride.
    """

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3)
        self.skip = ConvLayer(in_ch, out_ch, 1, activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


def build_convs(flow_size, channel_multiplier, is_flow, flow_downsample=8,
                blur_kernel=(1, 3, 3, 1), max_channels=512):
    """The residual part of the trunk.

    Returns:
        (nn.Sequential, output channels, output resolution).
    """
    log_size = int(math.log2(flow_size))
    num_halvings = int(math.log2(flow_downsample)) if is_flow else log_size - 2
    num_blocks = num_halvings + 1 if is_flow else num_halvings
    in_ch = stn_channels(flow_size, channel_multiplier, max_channels)
    layers = [ConvLayer(3, in_ch, 1)]
    resolution = flow_size
    for block in range(num_blocks):
        out_ch = stn_channels(flow_size >> (block + 1), channel_multiplier, max_channels)
        if block < num_halvings:
            layers.append(ResBlock(in_ch, out_ch, blur_kernel))
            resolution //= 2
        else:
            layers.append(SameSizeResBlock(in_ch, out_ch))
        in_ch = out_ch
    return nn.Sequential(*layers), in_ch, resolution


def build_final_layers(in_ch, is_flow, max_channels=512):
    """``final_conv`` (3x3 to the 4 x 4 width) and, for similarity, ``final_linear``.

    Returns:
        (final_conv, final_linear or None, feature width).
    """
    width = stn_channels(4, 0, max_channels)
    final_conv = ConvLayer(in_ch, width, 3)
    if is_flow:
        return final_conv, None, width
    return final_conv, EqualLinear(width * 4 * 4, width, activation='fused_lrelu'), width
