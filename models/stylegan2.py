"""StyleGAN2 generator with the state-dict layout of the official checkpoints.

The module tree (``style.1..n_mlp``, ``input.input``, ``conv1``, ``to_rgb1``,
``convs.i``, ``to_rgbs.i``, ``noises.noise_i``) is the layout used by the
pretrained GANgealing generators, so those load with ``strict=True``.
docs/stylegan2_checkpoints.md explains how to bring other StyleGAN2(-ADA)
weights.
"""
import math
from collections import OrderedDict
import re

import torch
from torch import nn

from models.layers import ConstantInput, EqualLinear, PixelNorm, StyledConv, ToRGB
from utils.errors import UserError, WeightsMismatchError
from utils.precision import cpu_float32_convolutions

__all__ = ['Generator', 'channel_table', 'generator_config_from_state_dict',
           'check_generator_state', 'convert_ada_state_dict']

# Half-precision blocks clamp their activations to this magnitude (the value the
# StyleGAN2-ADA configurations use with fp16) so that float16 cannot overflow.
FP16_CLAMP = 256.0


# Widest layers of the standard configurations (the 4 to 32 px blocks).
CHANNEL_MAX = 512
# The generator's default layout on a CPU (Generator.channels_last).
CHANNELS_LAST_ON_CPU = True


def channel_table(channel_multiplier, channel_max=CHANNEL_MAX):
    """Feature channels per resolution {4: 512, ..., 1024: 16 * cm}.

    Resolutions up to 32 have 512 channels; from 64 on the width is
    16384 / resolution * channel_multiplier (64 -> 256 cm, 128 -> 128 cm, ...).
    Every width is then capped at ``channel_max`` (512 in the standard
    configurations; smaller values make narrow models, e.g. for a CPU).
    """
    table = {4: 512, 8: 512, 16: 512, 32: 512}
    for log_res in range(6, 11):
        res = 2 ** log_res
        table[res] = int(round(16384 // res * channel_multiplier))
    return {res: min(width, channel_max) for res, width in table.items()}


def _describe(config):
    parts = [f'{k}={v}' for k, v in config.items() if v is not None]
    return ', '.join(parts)


def generator_config_from_state_dict(state_dict):
    """Read a generator's configuration off its state-dict shapes.

    Args:
        state_dict: mapping of names to tensors in the official layout.
    Returns:
        dict with ``size`` (from the number of ``to_rgbs``), ``style_dim``,
        ``n_mlp`` (number of ``style.N.weight``) and ``channel_multiplier``
        (from the channel count at the top resolution; None below size 64,
        where the multiplier changes nothing) and ``channel_max`` (the width
        of the 4 x 4 block).
    Raises:
        UserError when the mapping is not a StyleGAN2 generator state dict.
    """
    keys = list(state_dict.keys())
    if 'to_rgb1.conv.weight' not in state_dict or 'conv1.conv.modulation.weight' not in state_dict:
        sample = ', '.join(keys[:4]) + (', ...' if len(keys) > 4 else '')
        raise UserError(
            'the weights given for the StyleGAN2 generator are not a generator state dict '
            f'in the expected layout (keys: {sample or "none"}); pass the g_ema entry of a '
            'GANgealing/rosinality checkpoint (see docs/stylegan2_checkpoints.md)')
    n_mlp = sum(1 for k in keys if re.fullmatch(r'style\.\d+\.weight', k))
    rgb_indices = [int(m.group(1)) for k in keys
                   for m in [re.fullmatch(r'to_rgbs\.(\d+)\.conv\.weight', k)] if m]
    n_blocks = max(rgb_indices) + 1 if rgb_indices else 0
    size = 2 ** (n_blocks + 2)
    style_dim = state_dict['conv1.conv.modulation.weight'].shape[1]
    channel_multiplier = None
    if size >= 64:
        top_channels = state_dict[f'to_rgbs.{n_blocks - 1}.conv.weight'].shape[2]
        channel_multiplier = top_channels * size / 16384
        if channel_multiplier == int(channel_multiplier):
            channel_multiplier = int(channel_multiplier)
    channel_max = state_dict['conv1.conv.weight'].shape[1]
    if channel_multiplier is not None and channel_max < CHANNEL_MAX and top_channels == channel_max:
        channel_multiplier = None  # capped at the top: the multiplier cannot be read off
    return OrderedDict(size=size, style_dim=style_dim, n_mlp=n_mlp,
                       channel_multiplier=channel_multiplier, channel_max=channel_max)


def check_generator_state(generator, state_dict):
    """Raise a UserError naming both configurations when ``state_dict`` was
    saved from a generator of another size, width, latent size or depth."""
    found = generator_config_from_state_dict(state_dict)
    built = generator.config()
    if built['size'] < 64:
        built['channel_multiplier'] = None  # it changes no shape there
    same_widths = (found['channel_multiplier'] is None or built['channel_multiplier'] is None
                   or found['channel_multiplier'] == built['channel_multiplier'])
    if not same_widths or any(found[k] != built[k] for k in ('size', 'style_dim', 'n_mlp', 'channel_max')):
        raise WeightsMismatchError(
            f'the generator weights are for a StyleGAN2 with {_describe(found)}, but the model '
            f'was built with {_describe(built)}')


class Generator(nn.Module):
    """StyleGAN2 generator: z or w latents -> images (N, 3, size, size) in about [-1, 1].

    Args:
        size: output resolution, a power of two in [4, 1024].
        style_dim: width of z and w.
        n_mlp: number of layers of the mapping network.
        channel_multiplier: width multiplier of resolutions >= 64.
        blur_kernel: 1D FIR taps of the resampling filters.
        lr_mlp: learning-rate multiplier of the mapping network.
        num_fp16_res: run the last ``num_fp16_res`` resolutions in float16 on
            CUDA (float32 elsewhere); the RGB skip path stays float32.
        channel_max: cap on every block's width (512: the standard layout).

    Attributes: ``n_latent`` = 2 log2(size) - 2 style inputs, ``num_layers``
    noise inputs, ``style`` the mapping network (PixelNorm + n_mlp EqualLinear),
    ``channels_last``: on a CPU, in float32 (no bfloat16 autocast), the synthesis
    network runs on channels-last activations (the images it returns are
    NCHW-contiguous either way; docs/benchmarks.md has the measurement).
    """

    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01, num_fp16_res=0, channel_max=CHANNEL_MAX):
        super().__init__()
        log_size = math.log2(size) if size > 0 else -1
        if log_size != int(log_size) or not 2 <= log_size <= 10:
            raise UserError(f'generator size must be a power of two from 4 to 1024, got {size}')
        if num_fp16_res < 0:
            raise UserError(f'num_fp16_res must be >= 0, got {num_fp16_res}')
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.num_fp16_res = num_fp16_res
        self.log_size = int(log_size)
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        self.channel_max = channel_max
        self.channels = channel_table(channel_multiplier, channel_max)
        self.channels_last = CHANNELS_LAST_ON_CPU

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation='fused_lrelu')
            for _ in range(n_mlp)])

        ch = self.channels[4]
        self.input = ConstantInput(ch)
        self.conv1 = StyledConv(ch, ch, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch, style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch
        for log_res in range(3, self.log_size + 1):
            out_ch = self.channels[2 ** log_res]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

        # Fixed noise maps, used with randomize_noise=False; layer i works at
        # resolution 2 ** ((i + 5) // 2).
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f'noise_{i}', torch.randn(1, 1, res, res))

    def config(self):
        """The constructor arguments that decide the state-dict shapes."""
        return OrderedDict(size=self.size, style_dim=self.style_dim, n_mlp=self.n_mlp,
                           channel_multiplier=self.channel_multiplier,
                           channel_max=self.channels[4])

    # ---- latents --------------------------------------------------------------

    def _device(self):
        return self.input.input.device

    def make_noise(self, batch_size=1):
        """Fresh noise maps: list of num_layers tensors (batch_size, 1, r, r)."""
        return [torch.randn(batch_size, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2),
                            device=self._device())
                for i in range(self.num_layers)]

    def get_latent(self, z):
        """Mapping network: z (N, style_dim) -> w (N, style_dim)."""
        return self.style(z)

    def batch_latent(self, n):
        """``n`` samples of w: (n, style_dim), from z ~ N(0, I)."""
        return self.style(torch.randn(n, self.style_dim, device=self._device()))

    def mean_latent(self, n):
        """Mean of ``n`` w samples: (1, style_dim) (the truncation centre)."""
        return self.batch_latent(n).mean(dim=0, keepdim=True)

    def mix_styles(self, styles, inject_index=None):
        """Assemble W+ (N, n_latent, style_dim) from one or two w / W+ tensors.

        With two styles, entries [0, inject_index) come from the first and the
        rest from the second; inject_index is drawn from [1, n_latent - 1] (with
        torch's generator) when None.
        """
        expanded = []
        for s in styles:
            if s.ndim == 2:
                s = s.unsqueeze(1).expand(-1, self.n_latent, -1)
            elif s.ndim != 3 or s.shape[1] != self.n_latent:
                raise ValueError(f'styles must be (N, {self.style_dim}) or '
                                 f'(N, {self.n_latent}, {self.style_dim}), got {tuple(s.shape)}')
            expanded.append(s)
        if len(expanded) == 1:
            return expanded[0]
        if inject_index is None:
            inject_index = int(torch.randint(1, self.n_latent, ()).item())
        return torch.cat([expanded[0][:, :inject_index], expanded[1][:, inject_index:]], dim=1)

    # ---- synthesis --------------------------------------------------------------

    def _noise_inputs(self, noise, randomize_noise):
        if noise is None:
            if randomize_noise:
                return [None] * self.num_layers
            return [getattr(self.noises, f'noise_{i}') for i in range(self.num_layers)]
        noise = list(noise)
        if len(noise) != self.num_layers:
            raise ValueError(f'expected {self.num_layers} noise maps, got {len(noise)}')
        return noise

    def _block_dtype(self, log_res, device):
        """float16 for the last num_fp16_res resolutions on CUDA, else float32."""
        if device.type == 'cuda' and log_res > self.log_size - self.num_fp16_res:
            return torch.float16
        return torch.float32

    def synthesis(self, latent, noise):
        """W+ (N, n_latent, style_dim) and num_layers noise maps (or None entries)
        -> float32 images (N, 3, size, size)."""
        out = self.input(latent)
        if self.channels_last and cpu_float32_convolutions(out):
            # oneDNN convolves channels-last float32 activations in place of reordering NCHW ones at every
            # call (and their gradients); every layer here keeps the layout it is given. Under bfloat16
            # autocast it measured slower, so NCHW stays (docs/benchmarks.md).
            out = out.contiguous(memory_format=torch.channels_last)
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1]).float()
        for block, (up_conv, conv, to_rgb) in enumerate(
                zip(self.convs[::2], self.convs[1::2], self.to_rgbs)):
            dtype = self._block_dtype(block + 3, out.device)
            i = 2 * block + 1  # index of this block's first style and noise input
            out = up_conv(out.to(dtype), latent[:, i], noise=noise[i])
            if dtype == torch.float16:
                out = out.clamp(-FP16_CLAMP, FP16_CLAMP)
            out = conv(out, latent[:, i + 1], noise=noise[i + 1])
            if dtype == torch.float16:
                out = out.clamp(-FP16_CLAMP, FP16_CLAMP)
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip.contiguous()  # NCHW, whatever layout the layers ran in (3 channels: a small copy)

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1,
                truncation_latent=None, input_is_latent=False, noise=None,
                randomize_noise=True):
        """Generate images.

        Args:
            styles: list of one or two tensors: z (N, style_dim), or with
                ``input_is_latent`` w (N, style_dim) or W+ (N, n_latent, style_dim).
            return_latents: also return the W+ latents used.
            inject_index: style-mixing crossover with two styles (random if None).
            truncation: psi; styles become truncation_latent + psi (w - truncation_latent).
            truncation_latent: (1, style_dim) centre, required when truncation != 1.
            input_is_latent: styles are already w / W+ (skip the mapping network).
            noise: list of num_layers noise maps (entries may be None for fresh noise).
            randomize_noise: with noise None, draw fresh noise (True) or use the
                stored ``noises`` buffers (False).
        Returns:
            (images (N, 3, size, size) float32, W+ (N, n_latent, style_dim) or None).
        """
        if torch.is_tensor(styles):
            styles = [styles]
        if not 1 <= len(styles) <= 2:
            raise ValueError(f'styles must be a list of one or two tensors, got {len(styles)}')
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation != 1:
            if truncation_latent is None:
                raise ValueError('truncation != 1 needs a truncation_latent (e.g. G.mean_latent(4096))')
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        latent = self.mix_styles(styles, inject_index)
        image = self.synthesis(latent, self._noise_inputs(noise, randomize_noise))
        return image, (latent if return_latents else None)

    # ---- weights ------------------------------------------------------------------

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict`` for official-layout generator weights.

        Weights of another configuration raise a UserError naming both
        configurations; missing ``noises.*`` buffers keep their current values
        (checkpoints saved without them load strictly).
        """
        check_generator_state(self, state_dict)
        metadata = getattr(state_dict, '_metadata', None)
        state_dict = OrderedDict(state_dict)
        if metadata is not None:
            state_dict._metadata = metadata
        for name, buf in self.noises.named_buffers():
            state_dict.setdefault(f'noises.{name}', buf)
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            raise UserError(f'the generator weights do not fit the model although the '
                            f'configuration ({_describe(self.config())}) matches; the file may '
                            f'be damaged or in another layout: {" ".join(str(e).split())[:400]}'
                            ) from None


# ---- StyleGAN2-ADA (NVIDIA PyTorch) weights ----------------------------------------

def _ada_tensor(ada, key):
    if key not in ada:
        raise UserError(f"the StyleGAN2-ADA state dict has no '{key}'; pass the state_dict() "
                        "of the pickle's G_ema network (see docs/stylegan2_checkpoints.md)")
    return ada[key]


def _ada_styled_layer(out, ada, ours, theirs, noise_index):
    out[f'{ours}.conv.weight'] = _ada_tensor(ada, f'{theirs}.weight').unsqueeze(0)
    out[f'{ours}.conv.modulation.weight'] = _ada_tensor(ada, f'{theirs}.affine.weight')
    out[f'{ours}.conv.modulation.bias'] = _ada_tensor(ada, f'{theirs}.affine.bias')
    out[f'{ours}.noise.weight'] = _ada_tensor(ada, f'{theirs}.noise_strength').reshape(1)
    out[f'{ours}.activate.bias'] = _ada_tensor(ada, f'{theirs}.bias')
    noise = _ada_tensor(ada, f'{theirs}.noise_const')
    out[f'noises.noise_{noise_index}'] = noise.reshape(1, 1, *noise.shape[-2:])


def _ada_to_rgb(out, ada, ours, theirs):
    out[f'{ours}.conv.weight'] = _ada_tensor(ada, f'{theirs}.weight').unsqueeze(0)
    out[f'{ours}.conv.modulation.weight'] = _ada_tensor(ada, f'{theirs}.affine.weight')
    out[f'{ours}.conv.modulation.bias'] = _ada_tensor(ada, f'{theirs}.affine.bias')
    out[f'{ours}.bias'] = _ada_tensor(ada, f'{theirs}.bias').reshape(1, 3, 1, 1)


def convert_ada_state_dict(ada):
    """Rename an unconditional StyleGAN2-ADA ``G_ema.state_dict()`` to our layout.

    Args:
        ada: mapping with NVIDIA's names (``mapping.fc{i}.*``, ``synthesis.b{res}.
            {const, conv0, conv1, torgb}.*``, ``mapping.w_avg``).
    Returns:
        (state_dict for ``Generator`` (loads with strict=True into a generator of
        the matching configuration), w_avg (style_dim,) tensor or None). w_avg is
        the tracked mean of w, the usual truncation centre.
    Raises:
        UserError for conditional generators or missing entries.
    """
    if any(k.startswith('mapping.embed.') for k in ada):
        raise UserError('this StyleGAN2-ADA generator is class-conditional; only '
                        'unconditional generators can be used')
    n_mlp = sum(1 for k in ada if re.fullmatch(r'mapping\.fc\d+\.weight', k))
    resolutions = sorted({int(m.group(1)) for k in ada
                          for m in [re.fullmatch(r'synthesis\.b(\d+)\.conv1\.weight', k)] if m})
    if n_mlp == 0 or not resolutions or resolutions[0] != 4:
        raise UserError('the weights are not a StyleGAN2-ADA G_ema state dict (no mapping.fc* '
                        'or synthesis.b4.* entries); see docs/stylegan2_checkpoints.md')
    out = OrderedDict()
    for i in range(n_mlp):
        out[f'style.{i + 1}.weight'] = _ada_tensor(ada, f'mapping.fc{i}.weight')
        out[f'style.{i + 1}.bias'] = _ada_tensor(ada, f'mapping.fc{i}.bias')
    out['input.input'] = _ada_tensor(ada, 'synthesis.b4.const').unsqueeze(0)
    _ada_styled_layer(out, ada, 'conv1', 'synthesis.b4.conv1', 0)
    _ada_to_rgb(out, ada, 'to_rgb1', 'synthesis.b4.torgb')
    for block, res in enumerate(resolutions[1:]):
        prefix = f'synthesis.b{res}'
        _ada_styled_layer(out, ada, f'convs.{2 * block}', f'{prefix}.conv0', 2 * block + 1)
        _ada_styled_layer(out, ada, f'convs.{2 * block + 1}', f'{prefix}.conv1', 2 * block + 2)
        _ada_to_rgb(out, ada, f'to_rgbs.{block}', f'{prefix}.torgb')
        # NVIDIA stores the unit-sum filter and applies the upsampling gain (2 ** 2)
        # at run time; our buffers hold the filter with the gain included.
        out[f'convs.{2 * block}.conv.blur.kernel'] = 4 * _ada_tensor(
            ada, f'{prefix}.conv0.resample_filter')
        out[f'to_rgbs.{block}.upsample.kernel'] = 4 * _ada_tensor(ada, f'{prefix}.resample_filter')
    return out, ada.get('mapping.w_avg')
