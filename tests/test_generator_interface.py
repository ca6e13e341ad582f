"""The generator interface every --generator component keeps (docs/ARCHITECTURE.md).

Parametrised over generator names; the synthetic generator is tested when its
module imports.
"""
import argparse

import pytest
import torch

from models.generators import GENERATORS

BATCH = 2


def build_stylegan2():
    opt = argparse.Namespace(gen_size=8, dim_latent=16, n_mlp=2, gen_channel_multiplier=1,
                             num_fp16_res=0)
    G = GENERATORS.get('stylegan2').build(opt)
    with torch.no_grad():
        # Non-zero noise strengths so that noise handling is observable.
        for name, p in G.named_parameters():
            if name.endswith('noise.weight'):
                p.fill_(0.3)
    return G


def build_synthetic():
    module = pytest.importorskip('synthetic_world.generator')
    return module.SyntheticGenerator()


BUILDERS = {'stylegan2': build_stylegan2, 'synthetic': build_synthetic}


@pytest.fixture(params=sorted(BUILDERS), scope='module')
def generator(request):
    torch.manual_seed(0)
    G = BUILDERS[request.param]()
    return G.eval().requires_grad_(False)


def generate(G, styles, **kwargs):
    """First two entries of the returned tuple (images, latents)."""
    out = G(styles, **kwargs)
    return out[0], out[1]


def test_attributes(generator):
    G = generator
    assert isinstance(G.n_latent, int) and G.n_latent >= 2
    assert isinstance(G.style_dim, int) and G.style_dim > 0
    assert isinstance(G.size, int) and G.size >= 4


def test_images_and_latents(generator):
    G = generator
    z = torch.randn(BATCH, G.style_dim)
    images, latents = generate(G, [z])
    assert images.shape == (BATCH, 3, G.size, G.size)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert latents is None
    _, latents = generate(G, [z], return_latents=True)
    w = G.get_latent(z)
    assert w.shape == (BATCH, G.style_dim)
    assert torch.allclose(G.style(z), w)
    assert latents.shape == (BATCH, G.n_latent, G.style_dim)
    assert torch.allclose(latents, w[:, None].expand(-1, G.n_latent, -1), atol=1e-6)


def test_z_w_and_w_plus_inputs_agree(generator):
    G = generator
    z = torch.randn(BATCH, G.style_dim)
    w = G.get_latent(z)
    from_z, _ = generate(G, [z], randomize_noise=False)
    from_w, _ = generate(G, [w], input_is_latent=True, randomize_noise=False)
    w_plus = w[:, None].repeat(1, G.n_latent, 1)
    from_w_plus, _ = generate(G, [w_plus], input_is_latent=True, randomize_noise=False)
    assert torch.allclose(from_z, from_w, atol=1e-5)
    assert torch.allclose(from_w, from_w_plus, atol=1e-5)


def test_fixed_noise_is_deterministic(generator):
    G = generator
    w = G.batch_latent(BATCH)
    a, _ = generate(G, [w], input_is_latent=True, randomize_noise=False)
    b, _ = generate(G, [w], input_is_latent=True, randomize_noise=False)
    assert torch.equal(a, b)


def test_style_mixing(generator):
    G = generator
    w1, w2 = G.batch_latent(BATCH), G.batch_latent(BATCH)
    k = G.n_latent // 2
    _, latents = generate(G, [w1, w2], input_is_latent=True, inject_index=k, return_latents=True)
    assert torch.allclose(latents[:, :k], w1[:, None].expand(-1, k, -1))
    assert torch.allclose(latents[:, k:], w2[:, None].expand(-1, G.n_latent - k, -1))


def test_truncation_moves_toward_mean(generator):
    G = generator
    mean = G.mean_latent(32)
    assert mean.shape == (1, G.style_dim)
    w = G.batch_latent(BATCH)
    assert w.shape == (BATCH, G.style_dim)
    _, latents = generate(G, [w], input_is_latent=True, truncation=0.25,
                          truncation_latent=mean, return_latents=True)
    expected = mean + 0.25 * (w - mean)
    assert torch.allclose(latents, expected[:, None].expand(-1, G.n_latent, -1), atol=1e-6)
    at_mean, _ = generate(G, [w], input_is_latent=True, truncation=0, truncation_latent=mean,
                          randomize_noise=False)
    assert torch.allclose(at_mean[0], at_mean[1], atol=1e-5)


def test_gradients_reach_w_plus(generator):
    G = generator
    w_plus = G.batch_latent(BATCH)[:, None].repeat(1, G.n_latent, 1).requires_grad_(True)
    images, _ = generate(G, [w_plus], input_is_latent=True)
    images.square().mean().backward()
    assert w_plus.grad is not None and w_plus.grad.abs().sum() > 0
