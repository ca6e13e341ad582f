"""Modes of the synthetic world (--synthetic_modes K): distinct head types with a known mode per face."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import synthetic_world as W
from utils.errors import UserError
from synthetic_world.dataset import MODES_FILE, dataset_modes
from synthetic_world.generator import SyntheticGenerator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EAR_TIPS = [W.KEYPOINT_NAMES.index('left_ear_tip'), W.KEYPOINT_NAMES.index('right_ear_tip')]


def draw(n, seed, **factors):
    return W.sample_params(n, torch.Generator().manual_seed(seed), W.WorldFactors(**factors))


def test_one_mode_is_the_world_without_modes():
    params = draw(16, 3)
    assert torch.equal(params['mode'], torch.zeros(16))
    with_mode, _ = W.render(params, 32)
    without = {k: v for k, v in params.items() if k != 'mode'}
    plain, keypoints = W.render(without, 32)
    assert torch.equal(with_mode, plain)
    assert torch.equal(W.keypoints_from_params(params, 32), keypoints)


def test_modes_split_the_faces_and_keep_the_other_factors():
    one, two, three = draw(3000, 4), draw(3000, 4, modes=2), draw(3000, 4, modes=3)
    for params, k in ((two, 2), (three, 3)):
        counts = torch.bincount(params['mode'].long(), minlength=k).float() / 3000
        assert counts.numel() == k and (counts - 1 / k).abs().max() < 0.04
        # The head width that shares the factor stays uniform on its range, in every mode.
        for mode in range(k):
            width = params['shape'][params['mode'] == mode, 0] / W.WorldFactors().shape
            assert width.min() < -0.9 and width.max() > 0.9 and abs(float(width.mean())) < 0.08
    # Everything but the mode and the head width is the same draw.
    for key in ('scale', 'rotation', 'translation', 'colors', 'mirror', 'background'):
        assert torch.equal(one[key], two[key]), key
    assert torch.equal(one['shape'][:, 1:], two['shape'][:, 1:])


def test_modes_look_different_and_move_the_ear_tips():
    params = draw(12, 5, modes=3, rotation=0, translation=0, scale=(0.8, 0.8), shape=0, appearance=False,
                  background=False, mirror=False)
    images, keypoints = W.render(params, 48)
    cat = params['mode'] == 0
    assert cat.any() and (params['mode'] == 1).any() and (params['mode'] == 2).any()
    ears = keypoints[:, EAR_TIPS, :2]
    for mode in (1, 2):
        other = params['mode'] == mode
        # Every other head type puts its ear tips far (> 15% of the side) from the cat's.
        distance = (ears[other].mean(0) - ears[cat].mean(0)).norm(dim=-1)
        assert (distance > 0.15 * 48).all(), (mode, distance)
        changed = ((images[other][0] - images[cat][0]).abs().amax(0) > 0.2).float().mean()
        assert changed > 0.05, (mode, changed)
    # Within a mode, rigid faces at one pose coincide.
    assert torch.allclose(ears[cat], ears[cat][:1].expand_as(ears[cat]), atol=1e-4)


def test_bad_mode_counts_are_refused():
    for bad in (0, 4, 1.5):
        with pytest.raises(UserError, match='modes must be an integer'):
            W.WorldFactors(modes=bad).validate()


def test_the_generator_draws_its_modes_from_a_coarse_latent():
    generator = SyntheticGenerator(32, factors=W.WorldFactors(modes=2))
    plain = SyntheticGenerator(32)
    torch.manual_seed(0)
    z = torch.randn(400, W.NUM_FACTORS)
    w = generator.style(z)
    modes = generator.world_params(w.unsqueeze(1).repeat(1, generator.n_latent, 1), randomize_noise=False)['mode']
    # Mode = which side of zero the mode's coordinate is on; equal shares.
    assert torch.equal(modes, (z[:, W.MODE_FACTOR] > 0).float())
    assert 0.4 < float(modes.mean()) < 0.6
    # The mode's coordinate is W's widest direction, so PCA (and k-means) split along it.
    mode_direction = generator.style.weight[:, W.MODE_FACTOR]
    _, _, v = torch.pca_lowrank(w, q=3, center=True)
    assert abs(float(v[:, 0] @ mode_direction)) > 0.95
    # Only the mapping's spread differs from a one-mode world.
    assert torch.equal(generator.style.weight, plain.style.weight)
    # The coarse entries decide the mode: taking entries [0, 4) from another latent takes its mode.
    latents = w.unsqueeze(1).repeat(1, generator.n_latent, 1)
    flipped = latents.flip(0)
    mixed = torch.cat([flipped[:, :generator.coarse_layers], latents[:, generator.coarse_layers:]], dim=1)
    assert torch.equal(generator.world_params(mixed, randomize_noise=False)['mode'], modes.flip(0))


def test_prepare_data_records_the_true_modes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    out = tmp_path / 'data'
    result = subprocess.run([sys.executable, 'prepare_data.py', '--synthetic', '--synthetic_modes', '2', '--size',
                             '24', '--max_images', '10', '--seed', '3', '--out', str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    factors = W.WorldFactors(modes=2)
    modes = torch.load(out / MODES_FILE, weights_only=True)
    assert modes.dtype == torch.long and torch.equal(modes, dataset_modes(10, 3, factors))
    assert 0 < int(modes.sum()) < 10
    from datasets.lmdb_dataset import MultiResolutionDataset
    stored = np.stack([MultiResolutionDataset(str(out), 24).read_array(i) for i in range(10)])
    rendered, _ = W.render_dataset(10, 24, 3, factors)
    assert np.array_equal(stored, rendered)
    # A flag out of range is a usage error (exit 2, as train.py); a flag without --synthetic exits 1.
    for flags, message, code in ((['--path', str(tmp_path), '--synthetic_modes', '2'], 'applies to --synthetic', 1),
                                 (['--synthetic', '--synthetic_modes', '5'], 'modes must be an integer', 2)):
        result = subprocess.run([sys.executable, 'prepare_data.py', *flags, '--out', str(tmp_path / 'x')], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == code and message in result.stderr and 'Traceback' not in result.stderr
        assert not os.path.exists(tmp_path / 'x')
    # One mode writes no side file (and the same images as before modes existed).
    result = subprocess.run([sys.executable, 'prepare_data.py', '--synthetic', '--size', '24', '--max_images', '4',
                             '--out', str(tmp_path / 'one')], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and not os.path.exists(tmp_path / 'one' / MODES_FILE)
