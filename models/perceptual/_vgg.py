"""VGG16 feature distances shared by the ``lpips`` and ``vgg_ssl`` losses.

Both compare the two images' activations after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3 of a frozen VGG16 trunk: each activation is normalised to
unit length over channels, the squared difference is combined over channels
(a learned weight per channel for LPIPS, a plain sum otherwise), averaged over
positions and summed over the five layers.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.argparse_tools import has_option
from utils.download import DownloadError, resolve_weights
from utils.errors import UserError
from utils.precision import cpu_float32_convolutions

# VGG16 "D" configuration up to relu5_3: channel counts, 'M' = 2x2 max-pool.
_VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512)
# Indices (in torchvision's ``vgg16().features`` numbering) of the ReLUs compared.
TAPPED_RELUS = (3, 8, 15, 22, 29)
TAPPED_CHANNELS = (64, 128, 256, 512, 512)

# Input standardisation of LPIPS v0.1, for images in [-1, 1].
_INPUT_SHIFT = (-0.030, -0.088, -0.188)
_INPUT_SCALE = (0.458, 0.448, 0.450)

WEIGHTS_OPTION = '--perceptual_weights'


def add_weights_option(parser):
    """Add ``--perceptual_weights PATH`` unless an earlier component already did."""
    if not has_option(parser, WEIGHTS_OPTION):
        parser.add_argument(WEIGHTS_OPTION, type=str, default=None, metavar='PATH',
                            help='VGG16 weights file for the chosen perceptual loss (default: the torch hub '
                                 'cache, downloaded there when missing)')
    return parser


def resolve_vgg_weights(filename, url, opt):
    """Local path of a VGG16 weights file: ``opt.perceptual_weights``, the torch
    hub cache, or a download into it; a failed download names the file, where
    to put it, and the option to point at a copy."""
    try:
        return resolve_weights(filename, url, explicit_path=getattr(opt, 'perceptual_weights', None))
    except DownloadError as e:
        raise DownloadError(f'{e} (or pass its path with {WEIGHTS_OPTION} PATH)') from None


def _vgg16_trunk():
    """nn.Sequential numbered like torchvision's vgg16().features, ending at relu5_3."""
    layers, in_channels = [], 3
    for item in _VGG16_LAYOUT:
        if item == 'M':
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = item
    return nn.Sequential(*layers)


def _features_state_dict(state, path):
    """Trunk weights from a torchvision VGG16 checkpoint ('features.N.*', other
    keys ignored) or from a bare features state dict ('N.*')."""
    if not isinstance(state, dict) or not state:
        raise UserError(f"'{path}' does not hold a VGG16 state dict; delete it and run again to re-download, "
                        f"or pass a valid file with {WEIGHTS_OPTION}")
    if any(key.startswith('features.') for key in state):
        state = {key[len('features.'):]: value for key, value in state.items() if key.startswith('features.')}
    return state


def load_vgg16_trunk(path):
    """A VGG16 trunk (to relu5_3) with the weights stored in ``path`` (``VGGFeatureDistance`` freezes it).

    Raises UserError naming the file when it cannot be read or does not match.
    """
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # unreadable, truncated or not a tensor file
        raise UserError(f"could not read VGG16 weights from '{path}' ({type(e).__name__}: {e}); delete it and "
                        f"run again to re-download, or pass a valid file with {WEIGHTS_OPTION}") from None
    trunk = _vgg16_trunk()
    try:
        trunk.load_state_dict(_features_state_dict(state, path), strict=True)
    except RuntimeError as e:
        raise UserError(f"'{path}' is not a VGG16 feature state dict ({str(e).splitlines()[0]}); "
                        f"pass a valid file with {WEIGHTS_OPTION}") from None
    return trunk


class VGGFeatureDistance(nn.Module):
    """Per-sample distance between images from normalised VGG16 activations.

    Args:
        trunk: VGG16 feature layers (see ``load_vgg16_trunk``).
        channel_weights: None (sum over channels) or a sequence of five
            (C,) non-negative tensors, one per tapped layer (LPIPS).
        scale: factor applied to the summed distance.

    ``forward(a, b)``: images (N, 3, H, W) in [-1, 1] -> (N,) distances.
    Weights are frozen; gradients flow to both inputs.
    """

    def __init__(self, trunk, channel_weights=None, scale=1.0):
        super().__init__()
        self.slices = nn.ModuleList()
        start = 0
        for end in TAPPED_RELUS:
            self.slices.append(nn.Sequential(*[trunk[i] for i in range(start, end + 1)]))
            start = end + 1
        self.register_buffer('shift', torch.tensor(_INPUT_SHIFT).view(1, 3, 1, 1))
        self.register_buffer('scale_in', torch.tensor(_INPUT_SCALE).view(1, 3, 1, 1))
        self.weighted = channel_weights is not None
        for i, channels in enumerate(TAPPED_CHANNELS):
            weight = torch.ones(channels) if channel_weights is None else channel_weights[i].reshape(-1).float()
            if weight.numel() != channels:
                raise ValueError(f'layer {i}: expected {channels} channel weights, got {weight.numel()}')
            self.register_buffer(f'channel_weight{i}', weight.view(1, channels, 1, 1))
        self.scale = scale
        self.channels_last = True  # on a CPU in float32: see Generator.channels_last
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        # A frozen metric: no layer here behaves differently in training mode, keep it in eval.
        return super().train(False)

    def forward(self, a, b):
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f'expected two image batches of one shape (N, 3, H, W), got '
                             f'{tuple(a.shape)} and {tuple(b.shape)}')
        n = a.shape[0]
        # One pass over both images halves the launches.
        h = (torch.cat([a, b], 0) - self.shift) / self.scale_in
        if self.channels_last and cpu_float32_convolutions(h):
            h = h.contiguous(memory_format=torch.channels_last)  # as the generator: see Generator.channels_last
        distance = a.new_zeros(n)
        for i, layer in enumerate(self.slices):
            h = layer(h)
            unit = F.normalize(h, dim=1, eps=1e-10)
            squared = (unit[:n] - unit[n:]).pow(2)
            distance = distance + (squared * getattr(self, f'channel_weight{i}')).sum(1).mean((1, 2))
        return distance * self.scale
