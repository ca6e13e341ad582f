"""Equalised-learning-rate building blocks shared by the StyleGAN2 generator and
the spatial transformers.

Parameter and buffer names follow the layout of the official checkpoints (see
tests/data/official_checkpoint_schema.json): blur kernels are persistent buffers
called ``kernel``, equalised layers keep their raw ``weight``/``bias`` and
apply the He scale at run time, and ``ConvLayer`` is an ``nn.Sequential`` so
its children are addressed by index (``conv2.0.kernel``, ``conv2.1.weight``).

Every block follows the dtype of its input, so a caller may run a block in
half precision by casting the activations only.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F

from ops import upfirdn2d, fused_leaky_relu, FusedLeakyReLU

__all__ = [
    'make_kernel', 'Blur', 'Upsample', 'Downsample', 'EqualLinear', 'EqualConv2d',
    'ConvLayer', 'ResBlock', 'PixelNorm', 'ModulatedConv2d', 'NoiseInjection',
    'ConstantInput', 'StyledConv', 'ToRGB',
]


def make_kernel(k):
    """Normalised 2D FIR kernel.

    Args:
        k: 1D sequence/tensor of taps (made separable by an outer product) or
            a 2D sequence/tensor.
    Returns:
        float32 tensor (kh, kw) whose entries sum to 1.
    """
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    if k.ndim != 2:
        raise ValueError(f'a blur kernel must be 1D or 2D, got shape {tuple(k.shape)}')
    return k / k.sum()


def _split_padding(total):
    """Split ``total`` padding pixels into (before, after), extra pixel before."""
    return (total + 1) // 2, total // 2


class Blur(nn.Module):
    """FIR low-pass filter with fixed padding: (N, C, H, W) -> (N, C, H', W').

    With ``upsample_factor`` f > 1 the kernel is multiplied by f**2 so that it
    restores the energy lost by zero insertion before it (used after a strided
    transposed convolution). H' = H + pad[0] + pad[1] - kh + 1.
    """

    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * (upsample_factor ** 2)
        self.register_buffer('kernel', kernel)
        self.pad = tuple(pad)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """Zero-insertion upsampling by ``factor`` followed by the FIR ``kernel``:
    (N, C, H, W) -> (N, C, H * factor, W * factor)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        kernel = make_kernel(kernel) * (factor ** 2)
        self.register_buffer('kernel', kernel)
        before, after = _split_padding(kernel.shape[0] - factor)
        self.pad = (before + factor - 1, after)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Downsample(nn.Module):
    """FIR ``kernel`` then keep every ``factor``-th sample:
    (N, C, H, W) -> (N, C, H // factor, W // factor)."""

    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        kernel = make_kernel(kernel)
        self.register_buffer('kernel', kernel)
        self.pad = _split_padding(kernel.shape[0] - factor)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=1, down=self.factor, pad=self.pad)


class EqualLinear(nn.Module):
    """Linear layer with an equalised learning rate: (..., in_dim) -> (..., out_dim).

    The stored ``weight`` (out_dim, in_dim) is N(0, 1 / lr_mul**2) and is
    multiplied at run time by lr_mul / sqrt(in_dim); the stored ``bias`` is
    multiplied by lr_mul. A small ``lr_mul`` therefore slows this layer's
    effective learning rate without changing its initial function.

    ``activation='fused_lrelu'`` applies bias + leaky ReLU (slope 0.2, gain
    sqrt(2)) through ops.fused_leaky_relu; None means a plain affine map.
    """

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
        super().__init__()
        if activation not in (None, 'fused_lrelu'):
            raise ValueError(f"unknown activation '{activation}' (use None or 'fused_lrelu')")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        weight = (self.weight * self.scale).to(x.dtype)
        bias = None if self.bias is None else (self.bias * self.lr_mul).to(x.dtype)
        if self.activation == 'fused_lrelu':
            return fused_leaky_relu(F.linear(x, weight), bias)
        return F.linear(x, weight, bias)

    def extra_repr(self):
        return (f'{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}, '
                f'activation={self.activation}')


class EqualConv2d(nn.Module):
    """2D convolution with an equalised learning rate: (N, in_ch, H, W) -> (N, out_ch, H', W').

    ``weight`` (out_ch, in_ch, k, k) is N(0, 1) and scaled at run time by
    1 / sqrt(in_ch * k * k).
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride = stride
        self.padding = padding

    def forward(self, x):
        weight = (self.weight * self.scale).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        out_ch, in_ch, k, _ = self.weight.shape
        return f'{in_ch}, {out_ch}, {k}, stride={self.stride}, padding={self.padding}'


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU]: (N, in_ch, H, W) -> (N, out_ch, H', W').

    Without ``downsample`` the convolution is 'same' padded (H' = H); with it the
    input is blurred and the convolution has stride 2 (H' = H / 2). When the layer
    activates, the bias lives in the activation (child ``.bias``), otherwise in
    the convolution.
    """

    def __init__(self, in_ch, out_ch, kernel_size, downsample=False,
                 blur_kernel=(1, 3, 3, 1), bias=True, activate=True):
        layers = []
        if downsample:
            factor = 2
            layers.append(Blur(blur_kernel, pad=_split_padding(
                len(blur_kernel) - factor + kernel_size - 1)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual downsampling block: (N, in_ch, H, W) -> (N, out_ch, H / 2, W / 2).

    out = (conv2(conv1(x)) + skip(x)) / sqrt(2), the division keeping the
    variance of the sum of two roughly independent branches.
    """

    def __init__(self, in_ch, out_ch, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class PixelNorm(nn.Module):
    """Normalise each feature vector to unit root-mean-square: (N, D, ...) along dim 1."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated (and optionally demodulated) convolution.

    forward(x (N, in_ch, H, W), style (N, style_dim)) -> (N, out_ch, H', W') with
    H' = 2H when upsampling, H / 2 when downsampling, H otherwise.

    Each sample gets its own weights (the shared weight scaled per input channel
    by an affine map of its style); demodulation rescales each output filter to
    unit norm. Two equal ways to compute it (``fused`` chooses):

    - ``fused=False`` (the default for float32/bfloat16/float64 inputs): scale
      the activations by the style, run one ordinary convolution with the shared
      weight, then scale the outputs by the demodulation factors. No per-sample
      weight tensor (N x out x in x k x k) is built, and with a frozen weight the
      backward pass computes no weight gradient, only input and style ones: about
      2x faster forward+backward on a CPU at 64 px, 512 channels, batch 5.
    - ``fused=True`` (always for float16 inputs, where scaling the activations
      first could overflow): one grouped convolution with N groups over the
      per-sample weights, as the official code does.

    The modulation is computed in float32 and cast to the input's dtype.
    """

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, demodulate=True,
                 upsample=False, downsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample and downsample:
            raise ValueError('ModulatedConv2d cannot both upsample and downsample')
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.downsample = downsample
        self.demodulate = demodulate
        factor = 2
        if upsample:
            # The transposed convolution grows the map by k - 1 beyond 2H; the
            # blur's padding removes that excess.
            excess = len(blur_kernel) - factor - (kernel_size - 1)
            before, after = _split_padding(excess)
            self.blur = Blur(blur_kernel, pad=(before + factor - 1, after + 1),
                             upsample_factor=factor)
        elif downsample:
            self.blur = Blur(blur_kernel, pad=_split_padding(
                len(blur_kernel) - factor + kernel_size - 1))
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1)
        self.fused = False  # see the class docstring; float16 inputs always take the grouped form

    def extra_repr(self):
        return (f'{self.in_ch}, {self.out_ch}, {self.kernel_size}, '
                f'upsample={self.upsample}, downsample={self.downsample}, '
                f'demodulate={self.demodulate}')

    def modulated_weight(self, style):
        """Per-sample weights (N, out_ch, in_ch, k, k) in float32."""
        n = style.shape[0]
        s = self.modulation(style.float()).view(n, 1, self.in_ch, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)
            weight = weight * demod.view(n, self.out_ch, 1, 1, 1)
        return weight

    def forward(self, x, style):
        if self.fused or x.dtype == torch.float16:
            return self._forward_grouped(x, style)
        return self._forward_scaled(x, style)

    def _forward_scaled(self, x, style):
        """Style-scaled activations through the shared weight, then demodulated outputs."""
        n = x.shape[0]
        s = self.modulation(style.float())  # (N, in_ch)
        weight = self.scale * self.weight[0]  # (out_ch, in_ch, k, k)
        x = x * s.view(n, self.in_ch, 1, 1).to(x.dtype)
        if self.downsample:
            x = self.blur(x)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), padding=0, stride=2)
        elif self.downsample:
            out = F.conv2d(x, weight.to(x.dtype), stride=2)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # |w_n[o]|^2 = sum_i s[n, i]^2 sum_kk w[o, i, kk]^2: one small matrix product.
            demod = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).t() + 1e-8)  # (N, out_ch)
            out = out * demod.view(n, self.out_ch, 1, 1).to(out.dtype)
        return self.blur(out) if self.upsample else out

    def _forward_grouped(self, x, style):
        """One grouped convolution over the per-sample weights (``modulated_weight``)."""
        n, _, h, w = x.shape
        k = self.kernel_size
        weight = self.modulated_weight(style).to(x.dtype)

        if self.upsample:
            x = x.reshape(1, n * self.in_ch, h, w)
            # conv_transpose2d wants (in, out / groups, k, k) per group.
            weight = weight.transpose(1, 2).reshape(n * self.in_ch, self.out_ch, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=n)
            out = out.reshape(n, self.out_ch, out.shape[2], out.shape[3])
            return self.blur(out)

        weight = weight.reshape(n * self.out_ch, self.in_ch, k, k)
        if self.downsample:
            x = self.blur(x)
            h, w = x.shape[2], x.shape[3]
            out = F.conv2d(x.reshape(1, n * self.in_ch, h, w), weight, stride=2, groups=n)
        else:
            out = F.conv2d(x.reshape(1, n * self.in_ch, h, w), weight,
                           padding=self.padding, groups=n)
        return out.reshape(n, self.out_ch, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    """Add per-pixel noise scaled by a learned scalar ``weight`` (1,), zero at start.

    forward(image (N, C, H, W), noise (N or 1, 1, H, W) or None) -> (N, C, H, W);
    None draws fresh standard normal noise on the image's device.
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            n, _, h, w = image.shape
            noise = image.new_empty(n, 1, h, w).normal_()
        return image + (self.weight * noise).to(image.dtype)


class ConstantInput(nn.Module):
    """Learned constant ``input`` (1, channel, size, size) repeated over the batch.

    forward(x) -> (N, channel, size, size) where N = x.shape[0] (only the batch
    size of ``x`` is used).
    """

    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, x):
        return self.input.expand(x.shape[0], -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated convolution + noise + bias/leaky ReLU (children ``conv``,
    ``noise``, ``activate``).

    forward(x (N, in_ch, H, W), style (N, style_dim), noise=None) -> (N, out_ch, H', W').
    """

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1), demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x, style, noise=None):
        out = self.conv(x, style)
        out = self.noise(out, noise=noise)
        return self.activate(out)


class ToRGB(nn.Module):
    """1x1 modulated convolution to RGB (no demodulation) plus ``bias`` (1, 3, 1, 1),
    added to the upsampled RGB of the previous resolution.

    forward(x (N, in_ch, H, W), style (N, style_dim), skip (N, 3, H/2, W/2) or None)
    -> (N, 3, H, W). The result has the dtype of ``skip`` when one is given, else
    of ``x``; callers keep the RGB path in float32 when blocks run in half precision.
    """

    def __init__(self, in_ch, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style)
        if skip is not None:
            out = out.to(skip.dtype)
        out = out + self.bias.to(out.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out
