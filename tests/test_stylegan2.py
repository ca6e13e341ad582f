"""StyleGAN2 generator: official schema, loading, mixing, truncation, noise, fp16."""
import argparse
import io
import re

import pytest
import torch

from models.generators import GENERATORS
from models.stylegan2 import (Generator, channel_table, convert_ada_state_dict,
                              generator_config_from_state_dict)
from tests.official_schema import official_schema
from training.state import load_generator_weights
from utils.errors import UserError, WeightsMismatchError

STYLE_DIM = 16


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def small_generator(size=8, n_mlp=2, **kwargs):
    """A frozen generator with non-zero noise strengths and biases, so every input
    matters. (Resolutions up to 32 always have 512 channels, so sizes stay small.)"""
    G = Generator(size, STYLE_DIM, n_mlp, channel_multiplier=1, **kwargs)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith('noise.weight') or name.endswith('activate.bias'):
                p.normal_(0, 0.3)
    return G.eval().requires_grad_(False)


@pytest.fixture(scope='module')
def g8():
    torch.manual_seed(1)
    return small_generator(8)


@pytest.fixture(scope='module')
def g16():
    torch.manual_seed(2)
    return small_generator(16)


@pytest.mark.parametrize('size', [8, 16, 32])
def test_output_shapes(size):
    G = small_generator(size)
    z = torch.randn(1, STYLE_DIM)
    images, latents = G([z], return_latents=True)
    assert images.shape == (1, 3, size, size) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    n_latent = 2 * size.bit_length() - 4  # 2 log2(size) - 2
    assert G.n_latent == n_latent and G.num_layers == n_latent - 1
    assert latents.shape == (1, n_latent, STYLE_DIM)
    assert G([z])[1] is None
    assert len(G.make_noise(3)) == G.num_layers
    assert G.make_noise(3)[-1].shape == (3, 1, size, size)


def test_channel_table():
    assert channel_table(2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128,
                                512: 64, 1024: 32}
    assert channel_table(1)[64] == 256 and channel_table(1)[256] == 64
    assert channel_table(2, channel_max=64) == {4: 64, 8: 64, 16: 64, 32: 64, 64: 64, 128: 64, 256: 64,
                                                512: 64, 1024: 32}


def test_narrow_generator_is_recognised_and_refused_by_a_wide_one():
    narrow = Generator(32, 16, 2, channel_max=24)
    assert narrow.channels[4] == 24 and narrow.convs[-1].conv.weight.shape[1] == 24
    found = generator_config_from_state_dict(narrow.state_dict())
    assert dict(found) == dict(size=32, style_dim=16, n_mlp=2, channel_multiplier=None, channel_max=24)
    Generator(32, 16, 2, channel_max=24).load_state_dict(narrow.state_dict())
    with pytest.raises(UserError, match='channel_max=24'):
        Generator(32, 16, 2, channel_max=32).load_state_dict(narrow.state_dict())


@pytest.mark.parametrize('size', [256, 128])
def test_state_dict_matches_official_schema(size):
    schema = official_schema(f'g_ema size={size} style_dim=512 n_mlp=8 channel_multiplier=2')
    with torch.device('meta'):
        G = Generator(size, 512, 8, channel_multiplier=2)
    ours = {k: list(v.shape) for k, v in G.state_dict().items()}
    assert ours == schema
    assert G.n_latent == 2 * (size.bit_length() - 1) - 2


def test_official_schema_loads_strictly_and_is_recognised():
    schema = official_schema('g_ema size=256 style_dim=512 n_mlp=8 channel_multiplier=2')
    with torch.device('meta'):
        state = {k: torch.empty(v) for k, v in schema.items()}
        G = Generator(256, 512, 8)
        G.load_state_dict(state, strict=True)
    assert dict(generator_config_from_state_dict(state)) == dict(
        size=256, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512)


def test_state_dict_round_trip_through_file():
    G1, G2 = small_generator(8), small_generator(8)
    buffer = io.BytesIO()
    torch.save(G1.state_dict(), buffer)
    buffer.seek(0)
    G2.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    for (k1, v1), (k2, v2) in zip(G1.state_dict().items(), G2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    z = torch.randn(2, STYLE_DIM)
    assert torch.equal(G1([z], randomize_noise=False)[0], G2([z], randomize_noise=False)[0])


def test_strict_load_without_noise_buffers_keeps_current_noise():
    G1, G2 = small_generator(8), small_generator(8)
    before = G2.noises.noise_2.clone()
    state = {k: v for k, v in G1.state_dict().items() if not k.startswith('noises.')}
    G2.load_state_dict(state)
    assert torch.equal(G2.noises.noise_2, before)
    assert torch.equal(G2.input.input, G1.input.input)


@pytest.mark.parametrize('built, saved, named', [
    (dict(size=8), dict(size=16), ['size=16', 'size=8']),
    (dict(size=8, n_mlp=2), dict(size=8, n_mlp=3), ['n_mlp=3', 'n_mlp=2']),
    (dict(size=8, style_dim=16), dict(size=8, style_dim=8), ['style_dim=8', 'style_dim=16']),
    (dict(size=64, channel_multiplier=1), dict(size=64, channel_multiplier=2),
     ['channel_multiplier=2', 'channel_multiplier=1']),
])
def test_mismatched_configuration_names_both(built, saved, named):
    def make(cfg):
        cfg = dict(dict(style_dim=16, n_mlp=2, channel_multiplier=1), **cfg)
        with torch.device('meta'):
            return Generator(cfg.pop('size'), cfg.pop('style_dim'), cfg.pop('n_mlp'), **cfg)
    G, other = make(built), make(saved)
    with pytest.raises(WeightsMismatchError) as info:
        G.load_state_dict(other.state_dict())
    message = str(info.value)
    assert all(part in message for part in named), message
    assert '--' not in message  # the model speaks of its settings; flags are the trainer's to name
    assert 'Missing key' not in message and 'Unexpected key' not in message
    with pytest.raises(UserError) as info:  # the trainer adds which flags set them
        load_generator_weights(G, {'g_ema': other.state_dict()}, 'saved.pt')
    assert str(info.value).startswith('saved.pt: ') and '--gen_size' in str(info.value)


def test_non_generator_weights_give_readable_error(g8):
    G = g8
    with pytest.raises(UserError, match='not a generator state dict'):
        G.load_state_dict({'stns.0.final_conv.0.weight': torch.zeros(1)})
    state = G.state_dict()
    del state['conv1.noise.weight']
    with pytest.raises(UserError, match='conv1.noise.weight'):
        G.load_state_dict(state)


def test_style_mixing_switches_at_inject_index(g8):
    G = g8
    z1, z2 = torch.randn(2, STYLE_DIM), torch.randn(2, STYLE_DIM)
    w1, w2 = G.get_latent(z1), G.get_latent(z2)
    noise = G.make_noise(2)
    k = 2
    mixed, latents = G([z1, z2], inject_index=k, return_latents=True, noise=noise)
    assert torch.allclose(latents[:, :k], w1[:, None].expand(-1, k, -1))
    assert torch.allclose(latents[:, k:], w2[:, None].expand(-1, G.n_latent - k, -1))
    # Same image as the explicitly assembled W+.
    w_plus = torch.cat([w1[:, None].expand(-1, k, -1), w2[:, None].expand(-1, G.n_latent - k, -1)], 1)
    explicit, _ = G([w_plus], input_is_latent=True, noise=noise)
    assert torch.allclose(mixed, explicit, atol=1e-5)
    # The mix differs from both sources; a crossover at n_latent is the first style alone.
    only_first, _ = G([z1], noise=noise)
    only_second, _ = G([z2], noise=noise)
    assert (mixed - only_first).abs().max() > 1e-3 and (mixed - only_second).abs().max() > 1e-3
    no_mix, _ = G([z1, z2], inject_index=G.n_latent, noise=noise)
    assert torch.allclose(no_mix, only_first, atol=1e-5)
    # Changing the second style changes only the entries from inject_index on.
    _, latents_b = G([z1, torch.randn(2, STYLE_DIM)], inject_index=k, return_latents=True)
    assert torch.equal(latents_b[:, :k], latents[:, :k])
    assert not torch.allclose(latents_b[:, k:], latents[:, k:])


def test_random_inject_index_lies_inside(g16):
    G = g16
    w1, w2 = torch.zeros(1, STYLE_DIM), torch.ones(1, STYLE_DIM)
    seen = set()
    for _ in range(30):
        latents = G.mix_styles([w1, w2])
        index = int((latents[0, :, 0] == 0).sum())
        assert torch.all(latents[0, :index] == 0) and torch.all(latents[0, index:] == 1)
        seen.add(index)
    assert seen <= set(range(1, G.n_latent)) and len(seen) > 1


def test_truncation(g8):
    G = g8
    mean = G.mean_latent(64)
    assert mean.shape == (1, STYLE_DIM)
    z = torch.randn(3, STYLE_DIM)
    images, latents = G([z], truncation=0, truncation_latent=mean, randomize_noise=False,
                        return_latents=True)
    mean_image, _ = G([mean], input_is_latent=True, randomize_noise=False)
    assert torch.allclose(images, mean_image.expand(3, -1, -1, -1), atol=1e-5)
    _, half = G([z], truncation=0.5, truncation_latent=mean, return_latents=True)
    w = G.get_latent(z)
    assert torch.allclose(half[:, 0], mean + 0.5 * (w - mean), atol=1e-6)
    with pytest.raises(ValueError, match='truncation_latent'):
        G([z], truncation=0.5)


def test_noise_control(g8):
    G = g8
    z = torch.randn(2, STYLE_DIM)
    fixed_a, _ = G([z], randomize_noise=False)
    fixed_b, _ = G([z], randomize_noise=False)
    assert torch.equal(fixed_a, fixed_b)
    noise = G.make_noise(2)
    assert torch.equal(G([z], noise=noise)[0], G([z], noise=noise)[0])
    random_a, _ = G([z])
    random_b, _ = G([z])
    assert (random_a - random_b).abs().max() > 1e-4
    with pytest.raises(ValueError, match='noise maps'):
        G([z], noise=noise[:-1])


def test_w_and_w_plus_inputs_agree_and_carry_gradients(g8):
    G = g8
    w = G.batch_latent(2)
    assert w.shape == (2, STYLE_DIM)
    w_plus = w.detach()[:, None].repeat(1, G.n_latent, 1).requires_grad_(True)
    a, _ = G([w.detach()], input_is_latent=True, randomize_noise=False)
    b, latents = G([w_plus], input_is_latent=True, randomize_noise=False, return_latents=True)
    assert torch.allclose(a, b, atol=1e-6)
    assert latents.shape == w_plus.shape
    b.square().mean().backward()
    # Every W+ entry (the last one feeds only the final ToRGB) receives gradient.
    per_entry = w_plus.grad.abs().sum(dim=(0, 2))
    assert torch.all(per_entry > 0)
    z = torch.randn(2, STYLE_DIM, requires_grad=True)
    G([z])[0].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_fp16_setting_keeps_float32_on_cpu():
    G16 = small_generator(8, num_fp16_res=2)
    G32 = small_generator(8)
    G32.load_state_dict(G16.state_dict())
    z = torch.randn(2, STYLE_DIM)
    a, _ = G16([z], randomize_noise=False)
    b, _ = G32([z], randomize_noise=False)
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_half_precision_blocks_cast_per_block(monkeypatch):
    # CPU convolutions support float16, so the casting logic is checked here by
    # making the CUDA-only dtype choice apply on the CPU.
    G16 = small_generator(16, num_fp16_res=1)
    G32 = small_generator(16)
    G32.load_state_dict(G16.state_dict())
    monkeypatch.setattr(G16, '_block_dtype', lambda log_res, device: (
        torch.float16 if log_res > G16.log_size - G16.num_fp16_res else torch.float32))
    seen = {}
    for name in ('1', '2', '3'):
        G16.convs[int(name)].register_forward_hook(
            lambda module, args, out, name=name: seen.__setitem__(name, out.dtype))
    z = torch.randn(2, STYLE_DIM)
    a, _ = G16([z], randomize_noise=False)
    b, _ = G32([z], randomize_noise=False)
    assert seen == {'1': torch.float32, '2': torch.float16, '3': torch.float16}
    assert a.dtype == torch.float32
    assert (a - b).abs().max() <= 1e-2 * b.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fp16_blocks_on_cuda_stay_close_to_float32():
    G16 = small_generator(32, num_fp16_res=2).cuda()
    G32 = small_generator(32).cuda()
    G32.load_state_dict(G16.state_dict())
    z = torch.randn(4, STYLE_DIM, device='cuda')
    with torch.no_grad():
        a, _ = G16([z], randomize_noise=False)
        b, _ = G32([z], randomize_noise=False)
    assert a.dtype == torch.float32
    assert (a - b).abs().max() <= 2e-2 * b.abs().max()


def test_registered_component_builds_from_options():
    component = GENERATORS.get('stylegan2')
    parser = argparse.ArgumentParser()
    assert component.modify_commandline_options(parser, True) is parser
    opt = argparse.Namespace(gen_size=16, dim_latent=STYLE_DIM, n_mlp=3,
                             gen_channel_multiplier=1, num_fp16_res=1)
    G = component.build(opt)
    assert isinstance(G, Generator)
    assert (G.size, G.style_dim, G.n_mlp, G.num_fp16_res) == (16, STYLE_DIM, 3, 1)
    assert component.n_latent(opt) == G.n_latent == 6
    opt.gen_channel_max = 8
    assert component.build(opt).channels[4] == 8
    assert component.n_latent(argparse.Namespace(gen_size=256)) == 14


def ada_state_dict_like(G):
    """An unconditional StyleGAN2-ADA G_ema state dict (NVIDIA names) of G's shapes,
    filled with random values."""
    ours = G.state_dict()
    ada = {}
    for key, value in ours.items():
        m = re.fullmatch(r'style\.(\d+)\.(weight|bias)', key)
        if m:
            ada[f'mapping.fc{int(m.group(1)) - 1}.{m.group(2)}'] = torch.randn_like(value)
    ada['mapping.w_avg'] = torch.randn(G.style_dim)
    ada['synthesis.b4.const'] = torch.randn_like(ours['input.input'][0])
    filt = torch.tensor([1., 3., 3., 1.])
    filt = torch.outer(filt, filt) / 64

    def layer(prefix, conv, res):
        w = ours[f'{conv}.conv.weight'][0]
        ada[f'{prefix}.weight'] = torch.randn_like(w)
        ada[f'{prefix}.bias'] = torch.randn(w.shape[0])
        ada[f'{prefix}.affine.weight'] = torch.randn(w.shape[1], G.style_dim)
        ada[f'{prefix}.affine.bias'] = torch.randn(w.shape[1])
        ada[f'{prefix}.noise_const'] = torch.randn(res, res)
        ada[f'{prefix}.noise_strength'] = torch.randn(())
        ada[f'{prefix}.resample_filter'] = filt.clone()

    def torgb(prefix, rgb):
        w = ours[f'{rgb}.conv.weight'][0]
        ada[f'{prefix}.weight'] = torch.randn_like(w)
        ada[f'{prefix}.bias'] = torch.randn(3)
        ada[f'{prefix}.affine.weight'] = torch.randn(w.shape[1], G.style_dim)
        ada[f'{prefix}.affine.bias'] = torch.randn(w.shape[1])

    layer('synthesis.b4.conv1', 'conv1', 4)
    torgb('synthesis.b4.torgb', 'to_rgb1')
    ada['synthesis.b4.resample_filter'] = filt.clone()
    for block in range(len(G.to_rgbs)):
        res = 2 ** (block + 3)
        layer(f'synthesis.b{res}.conv0', f'convs.{2 * block}', res)
        layer(f'synthesis.b{res}.conv1', f'convs.{2 * block + 1}', res)
        torgb(f'synthesis.b{res}.torgb', f'to_rgbs.{block}')
        ada[f'synthesis.b{res}.resample_filter'] = filt.clone()
    return ada


def test_ada_state_dict_conversion():
    G = small_generator(16)
    ada = ada_state_dict_like(G)
    state, w_avg = convert_ada_state_dict(ada)
    G.load_state_dict(state, strict=True)
    assert all(torch.equal(G.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(w_avg, ada['mapping.w_avg'])
    assert torch.equal(G.style[2].weight, ada['mapping.fc1.weight'])
    assert torch.equal(G.input.input[0], ada['synthesis.b4.const'])
    assert torch.equal(G.convs[2].conv.weight[0], ada['synthesis.b16.conv0.weight'])
    assert torch.equal(G.convs[3].conv.modulation.bias, ada['synthesis.b16.conv1.affine.bias'])
    assert torch.equal(G.convs[3].activate.bias, ada['synthesis.b16.conv1.bias'])
    assert G.convs[1].noise.weight.item() == ada['synthesis.b8.conv1.noise_strength'].item()
    assert torch.equal(G.noises.noise_4[0, 0], ada['synthesis.b16.conv1.noise_const'])
    assert torch.equal(G.to_rgbs[1].bias.flatten(), ada['synthesis.b16.torgb.bias'])
    # The filters NVIDIA stores equal the buffers our layers build themselves.
    fresh = Generator(16, STYLE_DIM, 2, channel_multiplier=1)
    assert torch.allclose(state['convs.0.conv.blur.kernel'], fresh.convs[0].conv.blur.kernel)
    assert torch.allclose(state['to_rgbs.1.upsample.kernel'], fresh.to_rgbs[1].upsample.kernel)
    images, _ = G([torch.randn(1, STYLE_DIM)])
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_ada_conversion_rejects_unsupported_weights():
    G = small_generator(8)
    ada = ada_state_dict_like(G)
    with pytest.raises(UserError, match='conditional'):
        convert_ada_state_dict(dict(ada, **{'mapping.embed.weight': torch.zeros(1)}))
    with pytest.raises(UserError, match='not a StyleGAN2-ADA'):
        convert_ada_state_dict(G.state_dict())
    del ada['synthesis.b8.torgb.bias']
    with pytest.raises(UserError, match='synthesis.b8.torgb.bias'):
        convert_ada_state_dict(ada)
