"""The synthetic world's smooth per-face deformation (--synthetic_deformation)."""
import argparse

import pytest
import torch
import torch.nn.functional as F

import synthetic_world as W
from utils.errors import UserError
from synthetic_world.deformation import DEFORMATION_FACTORS, MAX_DEFORMATION, deform, undeform
from synthetic_world.generator import COARSE_LAYERS, SyntheticGenerator

D = 0.1
WIDE = W.NUM_FACTORS + DEFORMATION_FACTORS  # latent width a deforming generator needs


def sample(n, seed=0, **factors):
    return W.sample_params(n, torch.Generator().manual_seed(seed), W.WorldFactors(**factors))


def test_default_world_is_undeformed_and_deformation_changes_no_other_factor():
    plain, deformed = sample(64), sample(64, deformation=D)
    assert torch.equal(plain['deformation'], torch.zeros(64, DEFORMATION_FACTORS))
    for key, value in plain.items():
        if key != 'deformation':
            assert torch.equal(value, deformed[key]), key
    a = deformed['deformation']
    assert a.abs().max() <= D and a.abs().mean() > D / 3  # uniform in [-D, D]
    # Datasets too: same faces, other than the deformation.
    images, keypoints = W.render_dataset(6, 32, seed=5)
    images_d, keypoints_d = W.render_dataset(6, 32, seed=5, factors=W.WorldFactors(deformation=D))
    assert (images != images_d).any() and not torch.allclose(keypoints, keypoints_d)
    assert (keypoints[..., :2] - keypoints_d[..., :2]).abs().max() < 0.25 * 32


def test_undeform_inverts_deform():
    coefficients = MAX_DEFORMATION * (2 * torch.rand(5, DEFORMATION_FACTORS, generator=torch.Generator().manual_seed(0)) - 1)
    q = 2 * torch.rand(5, 30, 2, generator=torch.Generator().manual_seed(1)) - 1
    f = undeform(q, coefficients)
    x, y = deform(f[..., 0], f[..., 1], coefficients)
    assert torch.allclose(torch.stack([x, y], -1), q, atol=1e-4)
    assert (f - q).abs().max() > 0.05  # the points did move
    assert torch.equal(undeform(q, torch.zeros(5, DEFORMATION_FACTORS)), q)


def test_keypoints_are_drawn_where_the_deformed_parts_are():
    # As for the rigid world: the pupils (dark) sit on the eye keypoints and the nose
    # colour on the nose keypoint, now that every face is deformed.
    factors = W.WorldFactors(appearance=False, background=False, deformation=MAX_DEFORMATION)
    params = sample(4, seed=1, appearance=False, background=False, deformation=MAX_DEFORMATION)
    params['scale'] = params['scale'].clamp(min=0.75)
    images, keypoints = W.render(params, 256)
    colors = dict(zip(W.COLOR_NAMES, W.canonical_params(1, factors)['colors'][0]))
    grid = (keypoints[..., :2] + 0.5) * 2 / 256 - 1
    drawn = F.grid_sample(images, grid.unsqueeze(2), align_corners=False)[..., 0].permute(0, 2, 1)
    for name, color in (('left_eye', 'dark'), ('right_eye', 'dark'), ('nose', 'nose')):
        index = W.KEYPOINT_NAMES.index(name)
        assert (drawn[:, index] - colors[color]).abs().max() < 0.1, name


def _similarity_residual(keypoints, canonical):
    # RMS residual (pixels) of the best rotation + scale + shift fit of canonical onto each face.
    a = torch.complex(canonical[:, 0], canonical[:, 1])
    a = a - a.mean()
    b = torch.complex(keypoints[..., 0], keypoints[..., 1])
    b = b - b.mean(dim=1, keepdim=True)
    fit = (a.conj() * b).sum(1, keepdim=True) / (a.conj() * a).sum() * a
    return (b - fit).abs().pow(2).mean(1).sqrt()


def test_deformation_is_work_for_a_dense_flow():
    # Without shape changes a similarity explains rigid faces exactly; deformed faces keep
    # a residual (measured: median 1.4 pixels at 64 x 64 for D = 0.1, more than the shape
    # factors' 1.1), and on top of the shape factors the residual grows by half or more.
    rigid = dict(rotation=0, translation=0, scale=(0.8, 0.8), mirror=False)
    canonical = W.canonical_keypoints(64)[:, :2]

    def residual(**factors):
        return _similarity_residual(W.keypoints_from_params(sample(200, **rigid, **factors), 64)[..., :2],
                                    canonical).median()
    assert residual(shape=0) < 1e-3
    assert residual(shape=0, deformation=D) > 1.2
    assert residual(deformation=D) > 1.5 * residual()


def test_generator_reads_the_deformation_from_coarse_latents():
    factors = W.WorldFactors(deformation=D)
    with pytest.raises(UserError, match='dim_latent'):
        SyntheticGenerator(32, W.NUM_FACTORS, factors=factors)
    g = SyntheticGenerator(32, WIDE, factors=factors)
    w = g.batch_latent(500)
    params = g.world_params(w.unsqueeze(1).expand(-1, g.n_latent, -1))
    a = params['deformation']
    # As the renderer draws it: uniform in [-D, D] (mean |a| = D / 2).
    assert a.abs().max() <= D and abs(float(a.abs().mean()) - D / 2) < 0.01
    # The mean latent (a congealing target's coarse entries) is undeformed.
    mean = g.world_params(torch.zeros(1, g.n_latent, WIDE))['deformation']
    assert mean.abs().max() < 1e-6
    # Coarse entries set it, fine entries do not.
    mixed = torch.cat([w[:4, None].expand(-1, COARSE_LAYERS, -1),
                       w[4:8, None].expand(-1, g.n_latent - COARSE_LAYERS, -1)], dim=1)
    assert torch.allclose(g.world_params(mixed)['deformation'], a[:4])
    # The other factors are those of the undeformed world's generator on the same latents.
    plain = SyntheticGenerator(32, WIDE).world_params(mixed, randomize_noise=False)
    again = g.world_params(mixed, randomize_noise=False)
    assert torch.equal(plain['rotation'], again['rotation']) and torch.equal(plain['shape'], again['shape'])


def test_deformation_option_parses_and_is_checked():
    parser = argparse.ArgumentParser()
    W.add_world_options(parser)
    assert W.factors_from_options(parser.parse_args(['--synthetic_deformation', '0.05'])).deformation == 0.05
    assert W.factors_from_options(parser.parse_args([])).deformation == 0
    with pytest.raises(UserError, match='deformation'):
        W.factors_from_options(parser.parse_args(['--synthetic_deformation', '0.5']))


def test_training_options_ask_for_a_wide_enough_latent(tmp_path):
    from options import parse_training_options
    with pytest.raises(SystemExit):
        parse_training_options(['--exp-name', 'x', '--results', str(tmp_path), '--synthetic_deformation', '0.1'],
                               save=False)
    opt = parse_training_options(['--exp-name', 'x', '--results', str(tmp_path), '--synthetic_deformation', '0.1',
                                  '--dim_latent', str(WIDE)], save=False)
    assert opt.synthetic_deformation == 0.1 and opt.dim_latent == WIDE
