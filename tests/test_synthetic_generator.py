"""The differentiable synthetic generator and its ``--generator synthetic`` component."""
import argparse
import io

import pytest
import torch

from synthetic_world.generator import COARSE_LAYERS, SyntheticGenerator
import synthetic_world as W
from utils.errors import UserError

SIZE = 32
D = W.NUM_FACTORS  # the narrowest W the world fits in


@pytest.fixture(scope='module')
def generator():
    return SyntheticGenerator(SIZE, D)


def test_outputs_and_interface(generator):
    torch.manual_seed(0)
    z = torch.randn(3, D)
    images, latents, keypoints = generator([z], return_latents=True, return_keypoints=True)
    assert images.shape == (3, 3, SIZE, SIZE) and images.min() >= -1 and images.max() <= 1
    assert latents.shape == (3, generator.n_latent, generator.style_dim)
    assert torch.allclose(latents[:, 0], generator.get_latent(z), atol=1e-6)
    assert keypoints.shape == (3, W.NUM_KEYPOINTS, 3)
    assert generator([z])[1] is None and len(generator([z])) == 2
    assert generator.mean_latent(100).shape == (1, D) and generator.batch_latent(5).shape == (5, D)
    assert generator.style(z).shape == (3, D) and generator.size == SIZE
    # w, W+ and z inputs agree.
    w = generator.get_latent(z)
    noise = generator.make_noise(3)
    from_z, _ = generator([z], noise=noise)
    from_w, _ = generator([w], input_is_latent=True, noise=noise)
    from_wplus, _ = generator(w.unsqueeze(1).repeat(1, 8, 1), input_is_latent=True, noise=noise)
    assert torch.allclose(from_z, from_w, atol=1e-5) and torch.allclose(from_w, from_wplus, atol=1e-5)


def test_every_instance_draws_the_same_world(generator):
    other = SyntheticGenerator(SIZE, D)
    for key, value in generator.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key
    weight = generator.style.weight
    assert torch.allclose(weight @ weight.T, torch.eye(D), atol=1e-5)  # orthogonal mapping


def test_gradients_reach_every_wplus_entry(generator):
    torch.manual_seed(1)
    latent = generator.batch_latent(2).unsqueeze(1).repeat(1, 8, 1).requires_grad_(True)
    target = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    images, _ = generator([latent], input_is_latent=True, randomize_noise=False)
    (images - target).square().mean().backward()
    per_entry = latent.grad.norm(dim=-1)  # (2, 8)
    assert (per_entry > 0).all()


def test_coarse_entries_move_keypoints_and_fine_ones_do_not(generator):
    torch.manual_seed(2)
    latent = generator.batch_latent(4).unsqueeze(1).repeat(1, 8, 1)
    other = generator.batch_latent(4).unsqueeze(1).repeat(1, 8, 1)
    k = COARSE_LAYERS
    base_images, _, base_keypoints = generator([latent], input_is_latent=True, return_keypoints=True,
                                               randomize_noise=False)
    fine = torch.cat([latent[:, :k], other[:, k:]], dim=1)
    fine_images, _, fine_keypoints = generator([fine], input_is_latent=True, return_keypoints=True,
                                               randomize_noise=False)
    assert torch.equal(fine_keypoints, base_keypoints)
    assert (fine_images - base_images).abs().mean() > 0.05
    for entry in range(k):  # each coarse entry moves some keypoints
        coarse = latent.clone()
        coarse[:, entry] = other[:, entry]
        _, _, keypoints = generator([coarse], input_is_latent=True, return_keypoints=True)
        assert (keypoints[..., :2] - base_keypoints[..., :2]).norm(dim=-1).mean() > 0.1, entry


def test_mean_latent_draws_the_canonical_face(generator):
    torch.manual_seed(3)
    mean = generator.mean_latent(4096)
    _, _, keypoints = generator([mean], input_is_latent=True, return_keypoints=True)
    canonical = W.canonical_keypoints(SIZE)
    assert (keypoints[0, :, :2] - canonical[:, :2]).abs().max() < 0.25
    params = generator.world_params(mean.unsqueeze(1).repeat(1, 8, 1))
    assert params['rotation'].abs().item() < 0.02 and params['translation'].abs().max() < 0.005
    # Truncation towards the mean latent lands on the same face.
    z = torch.randn(2, D)
    _, _, truncated = generator([z], truncation=0, truncation_latent=mean, return_keypoints=True)
    assert (truncated[..., :2] - canonical[:, :2]).abs().max() < 0.25


def test_distribution_matches_the_renderer(generator):
    torch.manual_seed(4)
    latent = generator.batch_latent(4000).unsqueeze(1).repeat(1, 8, 1)
    generated = generator.world_params(latent)
    rendered = W.sample_params(4000, torch.Generator().manual_seed(0))
    quantiles = torch.linspace(0.05, 0.95, 10)
    for key in ('rotation', 'scale', 'translation', 'shape', 'colors', 'stripes', 'background', 'distractors'):
        ours = generated[key].reshape(4000, -1)
        theirs = rendered[key].reshape(4000, -1)
        spread = theirs.quantile(0.95, dim=0) - theirs.quantile(0.05, dim=0) + 1e-6
        gap = (ours.quantile(quantiles, dim=0) - theirs.quantile(quantiles, dim=0)).abs() / spread
        assert gap.max() < 0.06, key
    # Half the faces are mirrored, in the generator as in the renderer.
    assert 0.45 < generated['mirror'].mean() < 0.55 and 0.45 < rendered['mirror'].mean() < 0.55


def test_mirroring_is_a_fine_factor_that_keeps_the_keypoints(generator):
    torch.manual_seed(6)
    latent = generator.batch_latent(64).unsqueeze(1).repeat(1, 8, 1)
    mirrored = generator.world_params(latent, randomize_noise=False)['mirror']
    # Flip the sign of the mirror factor's coordinate in the entry it is read from, a fine one.
    index = W.FACTOR_SLICES['mirror'].start
    entry = int(generator.factor_layer[index])
    assert entry >= COARSE_LAYERS
    coords = generator.style.coordinates(latent)
    coords[:, entry, index] *= -1
    flipped_latent = (coords * generator.style.scales) @ generator.style.weight.t()
    assert torch.equal(generator.world_params(flipped_latent, randomize_noise=False)['mirror'], 1 - mirrored)
    images, _, keypoints = generator([latent], input_is_latent=True, return_keypoints=True,
                                     randomize_noise=False)
    flipped, _, flipped_keypoints = generator([flipped_latent], input_is_latent=True, return_keypoints=True,
                                              randomize_noise=False)
    assert torch.allclose(flipped_keypoints, keypoints, atol=1e-4)
    # Only the marking's side (and mirrored textures) changed: the images differ.
    assert ((flipped - images).abs().flatten(1).amax(1) > 0.3).all()


def test_noise_inputs(generator):
    torch.manual_seed(5)
    w = generator.batch_latent(2)
    fixed_a, _ = generator([w], input_is_latent=True, randomize_noise=False)
    fixed_b, _ = generator([w], input_is_latent=True, randomize_noise=False)
    assert torch.equal(fixed_a, fixed_b)
    random_a, _, keypoints_a = generator([w], input_is_latent=True, return_keypoints=True)
    random_b, _, keypoints_b = generator([w], input_is_latent=True, return_keypoints=True)
    assert not torch.equal(random_a, random_b) and torch.equal(keypoints_a, keypoints_b)
    noise = generator.make_noise(1)
    given_a, _ = generator([w], input_is_latent=True, noise=noise)
    given_b, _ = generator([w], input_is_latent=True, noise=noise)
    assert torch.equal(given_a, given_b)
    with pytest.raises(UserError):
        generator([w], input_is_latent=True, noise=[noise[0]])


def test_style_mixing(generator):
    w1, w2 = generator.batch_latent(2), generator.batch_latent(2)
    _, latent = generator([w1, w2], input_is_latent=True, inject_index=3, return_latents=True)
    assert torch.equal(latent[:, :3], w1.unsqueeze(1).expand(-1, 3, -1))
    assert torch.equal(latent[:, 3:], w2.unsqueeze(1).expand(-1, 5, -1))


def test_state_dict_round_trip(generator):
    other = SyntheticGenerator(SIZE, D)
    with torch.no_grad():
        other.noise_fur.normal_()
        other.style.weight.mul_(-1)
    buffer = io.BytesIO()
    torch.save(generator.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    w = generator.batch_latent(2)
    ours, _ = generator([w], input_is_latent=True, randomize_noise=False)
    theirs, _ = other([w], input_is_latent=True, randomize_noise=False)
    assert torch.equal(ours, theirs)


def test_bad_arguments_raise_user_errors(generator):
    with pytest.raises(UserError):
        SyntheticGenerator(SIZE, 32)
    with pytest.raises(UserError):
        generator([torch.randn(2, 5, D)], input_is_latent=True)
    with pytest.raises(UserError):
        generator([torch.randn(2, D)], truncation=0.5)


def test_registered_component_sets_demo_defaults_and_builds():
    from models.generators import GENERATORS
    component = GENERATORS.get('synthetic')
    parser = argparse.ArgumentParser()
    for flag, default in (('--gen_size', 256), ('--dim_latent', 512), ('--inject', 5), ('--real_size', 256)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument('--dataset_mode', default='lmdb')
    component.modify_commandline_options(parser, True)
    opt = parser.parse_args(['--synthetic_rotation', '0', '--gen_size', '24'])
    assert (opt.dataset_mode, opt.dim_latent, opt.inject, opt.real_size) == ('synthetic', D, COARSE_LAYERS, 64)
    assert component.n_latent(opt) == 8
    built = component.build(opt)
    assert isinstance(built, SyntheticGenerator) and built.size == 24
    latent = built.batch_latent(50).unsqueeze(1).repeat(1, 8, 1)
    assert (built.world_params(latent)['rotation'] == 0).all()
    component.validate(opt, parser)
    opt.dim_latent = D - 1
    with pytest.raises(SystemExit):
        component.validate(opt, parser)


def test_demo_switches_can_be_turned_off(tmp_path):
    from options import parse_training_options
    base = ['--exp-name', 'demo', '--results', str(tmp_path)]
    opt = parse_training_options(base, save=False)  # no --ckpt: the synthetic generator
    assert opt.generator == 'synthetic' and opt.sample_from_full_res
    assert opt.transform == ['similarity', 'similarity', 'flow'] and opt.eval_iters == 1
    opt = parse_training_options(base + ['--no-sample_from_full_res', '--transform', 'similarity', 'flow'],
                                 save=False)
    assert not opt.sample_from_full_res and opt.transform == ['similarity', 'flow']
