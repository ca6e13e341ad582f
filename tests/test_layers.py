"""Equalised building blocks: formulas, shapes, state-dict names."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.layers import (Blur, ConstantInput, ConvLayer, Downsample, EqualConv2d, EqualLinear,
                           ModulatedConv2d, NoiseInjection, PixelNorm, ResBlock, StyledConv,
                           ToRGB, Upsample, make_kernel)
from tests.official_schema import official_modules



@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_make_kernel_outer_product_and_normalised():
    k = make_kernel([1, 3, 3, 1])
    assert k.shape == (4, 4)
    expected = torch.tensor([1., 3., 3., 1.])
    expected = torch.outer(expected, expected) / 64
    assert torch.allclose(k, expected)
    k2 = make_kernel([[1, 2], [3, 4]])
    assert torch.allclose(k2, torch.tensor([[1., 2.], [3., 4.]]) / 10)
    with pytest.raises(ValueError):
        make_kernel(torch.ones(2, 2, 2))


def test_resampling_shapes_and_constant_preservation():
    x = torch.ones(2, 3, 8, 8)
    up = Upsample([1, 3, 3, 1])(x)
    down = Downsample([1, 3, 3, 1])(x)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    # Away from the zero-padded border a constant image stays constant (unit DC gain).
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones(1), atol=1e-6)
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.ones(1), atol=1e-6)
    blurred = Blur([1, 3, 3, 1], pad=(2, 1))(x)
    assert blurred.shape == x.shape
    assert torch.allclose(blurred[..., 2:-2, 2:-2], torch.ones(1), atol=1e-6)
    # Upsampling blur carries the factor ** 2 gain that zero insertion needs.
    assert math.isclose(Blur([1, 3, 3, 1], pad=(1, 1), upsample_factor=2).kernel.sum().item(), 4.0,
                        rel_tol=1e-6)


def test_kernels_are_persistent_buffers():
    for module in (Blur([1, 3, 3, 1], pad=(1, 1)), Upsample([1, 3, 3, 1]), Downsample([1, 3, 3, 1])):
        assert list(module.state_dict()) == ['kernel']
        assert module.state_dict()['kernel'].shape == (4, 4)


def test_equal_linear_runtime_scale_and_lr_mul():
    layer = EqualLinear(16, 8, bias_init=0.5, lr_mul=0.01)
    x = torch.randn(5, 16)
    expected = x @ (layer.weight * 0.01 / 4).t() + layer.bias * 0.01
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # Stored weights are N(0, 1 / lr_mul ** 2) so the effective weights are N(0, 1 / in_dim).
    assert 50 < layer.weight.std().item() < 200
    assert torch.allclose(layer.bias, torch.full((8,), 0.5))

    act = EqualLinear(16, 8, activation='fused_lrelu')
    with torch.no_grad():
        act.bias.normal_()
    pre = x @ (act.weight / 4).t() + act.bias
    assert torch.allclose(act(x), F.leaky_relu(pre, 0.2) * math.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError):
        EqualLinear(4, 4, activation='relu')


def test_equal_conv2d_matches_scaled_convolution():
    conv = EqualConv2d(4, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 4, 9, 9)
    expected = F.conv2d(x, conv.weight / math.sqrt(4 * 9), conv.bias, stride=2, padding=1)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert list(EqualConv2d(4, 6, 1, bias=False).state_dict()) == ['weight']


def test_conv_layer_children_follow_official_names():
    plain = ConvLayer(3, 8, 1)
    assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == {
        '0.weight': (8, 3, 1, 1), '1.bias': (8,)}
    down = ConvLayer(8, 16, 3, downsample=True)
    assert {k: tuple(v.shape) for k, v in down.state_dict().items()} == {
        '0.kernel': (4, 4), '1.weight': (16, 8, 3, 3), '2.bias': (16,)}
    linear = ConvLayer(8, 16, 1, downsample=True, activate=False, bias=False)
    assert list(linear.state_dict()) == ['0.kernel', '1.weight']
    x = torch.randn(2, 8, 16, 16)
    assert down(x).shape == (2, 16, 8, 8)
    assert plain(torch.randn(2, 3, 16, 16)).shape == (2, 8, 16, 16)
    # Not activating and with a bias: the bias lives in the convolution.
    assert list(ConvLayer(8, 4, 3, activate=False).state_dict()) == ['0.weight', '0.bias']


def test_res_block_matches_official_schema_and_formula():
    modules = official_modules()
    stn = next(v for k, v in modules.items() if k.startswith('t_ema') and 'num_heads=1' in k
               and 'flow' in k)
    prefix = 'stns.0.convs.1.'
    official = {k[len(prefix):]: v for k, v in stn.items() if k.startswith(prefix)}
    in_ch, out_ch = official['conv1.0.weight'][0], official['conv2.1.weight'][0]
    block = ResBlock(in_ch, out_ch)
    ours = {k: list(v.shape) for k, v in block.state_dict().items()}
    assert ours == official

    small = ResBlock(4, 8)
    with torch.no_grad():
        for p in small.parameters():
            p.normal_()
    x = torch.randn(2, 4, 8, 8)
    out = small(x)
    assert out.shape == (2, 8, 4, 4)
    assert torch.allclose(out, (small.conv2(small.conv1(x)) + small.skip(x)) / math.sqrt(2))


def test_pixel_norm_gives_unit_rms():
    x = torch.randn(6, 32) * 7 + 1
    rms = PixelNorm()(x).pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rms, torch.ones(6), atol=1e-5)


@pytest.mark.parametrize('mode', ['same', 'up', 'down'])
def test_modulated_conv_is_per_sample(mode):
    conv = ModulatedConv2d(4, 6, 3, style_dim=5, upsample=mode == 'up', downsample=mode == 'down')
    x, style = torch.randn(3, 4, 8, 8), torch.randn(3, 5)
    out = conv(x, style)
    expected_size = {'same': 8, 'up': 16, 'down': 4}[mode]
    assert out.shape == (3, 6, expected_size, expected_size)
    # The grouped batch computation equals running every sample on its own.
    for i in range(3):
        assert torch.allclose(out[i:i + 1], conv(x[i:i + 1], style[i:i + 1]), atol=1e-5)
    keys = set(conv.state_dict())
    assert ('blur.kernel' in keys) == (mode != 'same')
    assert conv.state_dict()['weight'].shape == (1, 6, 4, 3, 3)
    assert conv.state_dict()['modulation.weight'].shape == (4, 5)
    assert torch.allclose(conv.modulation.bias, torch.ones(4))


def test_modulated_conv_formula_and_demodulation():
    conv = ModulatedConv2d(4, 6, 3, style_dim=5)
    x, style = torch.randn(2, 4, 8, 8), torch.randn(2, 5)
    weights = conv.modulated_weight(style)
    # Demodulated filters have unit norm per output channel.
    assert torch.allclose(weights.pow(2).sum(dim=(2, 3, 4)), torch.ones(2, 6), atol=1e-4)
    s = conv.modulation(style)
    w0 = conv.weight[0] / math.sqrt(4 * 9) * s[0].view(1, 4, 1, 1)
    w0 = w0 / w0.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
    assert torch.allclose(conv(x, style)[:1], F.conv2d(x[:1], w0, padding=1), atol=1e-5)

    plain = ModulatedConv2d(4, 3, 1, style_dim=5, demodulate=False)
    w = plain.weight[0] / 2 * plain.modulation(style)[1].view(1, 4, 1, 1)
    assert torch.allclose(plain(x, style)[1:], F.conv2d(x[1:], w), atol=1e-5)


def test_modulated_conv_follows_input_dtype():
    conv = ModulatedConv2d(4, 6, 3, style_dim=5, upsample=True)
    x, style = torch.randn(2, 4, 8, 8), torch.randn(2, 5)
    out64 = conv(x.double(), style)
    assert out64.dtype == torch.float64
    assert torch.allclose(out64.float(), conv(x, style), atol=1e-5)


def test_noise_injection():
    layer = NoiseInjection()
    assert layer.weight.shape == (1,) and layer.weight.item() == 0
    image, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 4)
    assert torch.equal(layer(image, noise), image)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    assert torch.allclose(layer(image, noise), image + 0.5 * noise)
    a, b = layer(image), layer(image)
    assert a.shape == image.shape and not torch.allclose(a, b)


def test_constant_input_repeats_over_batch():
    layer = ConstantInput(8)
    out = layer(torch.zeros(3, 5))
    assert out.shape == (3, 8, 4, 4)
    assert torch.equal(out[2], layer.input[0])
    assert list(layer.state_dict()) == ['input']


def test_styled_conv_and_to_rgb():
    styled = StyledConv(4, 6, 3, style_dim=5, upsample=True)
    assert sorted(styled.state_dict()) == sorted([
        'conv.weight', 'conv.blur.kernel', 'conv.modulation.weight', 'conv.modulation.bias',
        'noise.weight', 'activate.bias'])
    x, style = torch.randn(2, 4, 8, 8), torch.randn(2, 5)
    assert styled(x, style).shape == (2, 6, 16, 16)

    rgb = ToRGB(6, 5)
    with torch.no_grad():
        rgb.bias.normal_()
    feats, skip = torch.randn(2, 6, 16, 16), torch.randn(2, 3, 8, 8)
    out = rgb(feats, style, skip)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, rgb.conv(feats, style) + rgb.bias + rgb.upsample(skip), atol=1e-6)
    first = ToRGB(6, 5, upsample=False)
    assert 'upsample.kernel' not in first.state_dict()
    assert first.state_dict()['bias'].shape == (1, 3, 1, 1)
    assert first(feats, style).shape == (2, 3, 16, 16)


@pytest.mark.parametrize('mode', ['same', 'up', 'down', 'plain'])
def test_modulated_conv_scaled_form_equals_grouped_form(mode):
    # The default (activations scaled by the style) and the official grouped
    # form give the same outputs and the same gradients for x and the style.
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 6, 1 if mode == 'plain' else 3, style_dim=5, demodulate=mode != 'plain',
                           upsample=mode == 'up', downsample=mode == 'down')
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    style = torch.randn(3, 5, requires_grad=True)
    results = []
    for fused in (False, True):
        conv.fused = fused
        out = conv(x, style)
        grads = torch.autograd.grad(out.sin().sum(), (x, style))
        results.append((out, *grads))
    for scaled, grouped in zip(*results):
        assert torch.allclose(scaled, grouped, rtol=1e-4, atol=1e-5)
