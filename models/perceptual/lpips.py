"""``--loss_fn lpips``: LPIPS v0.1 with a VGG16 trunk.

The per-channel linear weights come with the ``lpips`` package
(``lpips/weights/v0.1/vgg.pth``); the VGG16 trunk is torchvision's ImageNet
checkpoint, found through the project's weight resolution (an explicit
``--perceptual_weights`` path, the torch hub cache, then a download).
"""
import os

import torch

from models.perceptual import PERCEPTUAL_LOSSES
from models.perceptual._vgg import (TAPPED_CHANNELS, VGGFeatureDistance, add_weights_option, load_vgg16_trunk,
                                    resolve_vgg_weights)
from utils.errors import UserError

VGG16_FILENAME = 'vgg16-397923af.pth'
VGG16_URL = f'https://download.pytorch.org/models/{VGG16_FILENAME}'


def lpips_linear_weights_path():
    """Path of the LPIPS v0.1 VGG linear-layer weights shipped in the ``lpips`` package."""
    try:
        import lpips
    except ImportError:
        raise UserError("the 'lpips' loss needs the lpips package: pip install lpips "
                        "(or choose another --loss_fn)") from None
    path = os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', 'vgg.pth')
    if not os.path.isfile(path):
        raise UserError(f"the lpips package has no '{path}'; reinstall it with pip install --force-reinstall lpips")
    return path


def load_lpips_channel_weights(path):
    """The five non-negative (C,) channel weights of LPIPS v0.1 (VGG), from ``path``."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    weights = []
    for i, channels in enumerate(TAPPED_CHANNELS):
        # Stored as 1x1 convolutions (1, C, 1, 1) behind a dropout: key lin{i}.model.1.weight.
        key = f'lin{i}.model.1.weight'
        if key not in state or state[key].numel() != channels:
            raise UserError(f"'{path}' is not an LPIPS v0.1 VGG weights file (missing or wrong '{key}')")
        weights.append(state[key].reshape(channels).float())
    return weights


@PERCEPTUAL_LOSSES.register('lpips')
class LPIPSLoss:
    """LPIPS (VGG16): learned channel weights over normalised VGG activations."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        return add_weights_option(parser)

    @staticmethod
    def build(opt):
        """Frozen module ``loss(a, b) -> (N,)`` for images (N, 3, H, W) in [-1, 1]."""
        trunk_path = resolve_vgg_weights(VGG16_FILENAME, VGG16_URL, opt)
        return VGGFeatureDistance(load_vgg16_trunk(trunk_path),
                                  channel_weights=load_lpips_channel_weights(lpips_linear_weights_path()))
