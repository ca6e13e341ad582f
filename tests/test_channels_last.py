"""The generator and the VGG distance compute the same values and gradients whether their activations
run channels-last (their CPU default, faster under oneDNN) or NCHW, and hand back NCHW images."""
import torch

from models import Generator
from models.perceptual._vgg import VGGFeatureDistance, _vgg16_trunk


def _images_and_grad(generator, latent, channels_last):
    generator.channels_last = channels_last
    latent = latent.clone().requires_grad_()
    images, _ = generator([latent], input_is_latent=True, randomize_noise=False)
    (images * torch.linspace(-1, 1, images.numel()).view_as(images)).sum().backward()
    return images, latent.grad


def test_generator_layouts_agree():
    torch.manual_seed(0)
    generator = Generator(16, 32, 2, channel_multiplier=1).eval().requires_grad_(False)
    latent = torch.randn(2, generator.n_latent, 32)
    fast, fast_grad = _images_and_grad(generator, latent, True)
    plain, plain_grad = _images_and_grad(generator, latent, False)
    assert fast.is_contiguous() and fast.shape == (2, 3, 16, 16)
    # Float rounding only (the convolutions sum in another order): relative to each tensor's scale.
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert (fast_grad - plain_grad).abs().max() <= 1e-5 * plain_grad.abs().max()
    assert fast_grad.abs().sum() > 0


def test_vgg_distance_layouts_agree():
    torch.manual_seed(0)
    distance = VGGFeatureDistance(_vgg16_trunk())
    a = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    results = []
    for channels_last in (True, False):
        distance.channels_last = channels_last
        value = distance(a, b)
        grad, = torch.autograd.grad(value.sum(), a)
        results.append((value, grad))
    (fast, fast_grad), (plain, plain_grad) = results
    assert torch.allclose(fast, plain, rtol=1e-4) and fast.shape == (2,)
    assert (fast_grad - plain_grad).abs().max() <= 1e-4 * plain_grad.abs().max()


def test_channels_last_only_for_float32_cpu_convolutions():
    from utils.precision import cpu_float32_convolutions
    x = torch.zeros(1, 2, 3, 3)
    assert cpu_float32_convolutions(x)
    assert not cpu_float32_convolutions(x.bfloat16())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not cpu_float32_convolutions(x)  # measured slower in bfloat16: NCHW stays
