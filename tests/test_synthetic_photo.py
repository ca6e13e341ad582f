"""The photo world's factors: a camera-frame scene, occluders and lighting (synthetic_world/photo.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import synthetic_world as W
from synthetic_world.generator import SyntheticGenerator
from synthetic_world.options import WORLD_PRESETS
from synthetic_world.photo import occluder_distance

PHOTO = W.WorldFactors(**WORLD_PRESETS['photo'])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(n, seed=0, **factors):
    return W.sample_params(n, torch.Generator().manual_seed(seed), W.WorldFactors(**factors))


def test_default_world_is_unchanged_and_photo_keeps_the_faces():
    plain = sample(6)
    photo = sample(6, **WORLD_PRESETS['photo'])
    assert 'scene_colors' not in plain and 'occluders' not in plain and 'lighting' not in plain
    for key in ('scale', 'rotation', 'translation', 'shape', 'colors', 'mirror'):
        assert torch.equal(plain[key], photo[key]), key  # photo factors are drawn after the others
    images, _ = W.render(plain, 32)
    photo_images, _ = W.render(photo, 32)
    assert (images - photo_images).abs().mean() > 0.05


def test_photo_datasets_are_deterministic_per_seed_and_the_same_at_every_size():
    images, keypoints = W.render_dataset(6, 32, seed=5, factors=PHOTO)
    again, again_keypoints = W.render_dataset(6, 32, seed=5, factors=PHOTO, batch_size=4)
    assert (images == again).all() and torch.equal(keypoints, again_keypoints)
    other, _ = W.render_dataset(6, 32, seed=6, factors=PHOTO)
    assert (other != images).any()
    params = W.indexed_params(range(6), 5, PHOTO)
    small, small_keypoints = W.render(params, 32)
    large, large_keypoints = W.render(params, 128)
    assert torch.allclose((small_keypoints[..., :2] + 0.5) * 4 - 0.5, large_keypoints[..., :2], atol=1e-4)
    # Visibility is decided in continuous coordinates, the same at both sizes (up to the canvas border).
    inside = ((large_keypoints[..., :2] > 2) & (large_keypoints[..., :2] < 125)).all(-1)
    assert torch.equal(small_keypoints[..., 2][inside], large_keypoints[..., 2][inside])
    assert (small - F.avg_pool2d(large, 4)).abs().mean() < 0.03


def _corners(images, size, keep):
    # Pixels farther than ``keep`` (normalised units) from the canvas centre.
    c = (torch.arange(size) * 2 + 1) / size - 1
    far = (c[None, :] ** 2 + c[:, None] ** 2).sqrt() > keep
    return images[..., far]


@pytest.mark.parametrize('scene', [True, False], ids=['scene', 'face_frame_background'])
def test_pose_latents_move_the_face_and_leave_the_scene(scene):
    # Small centred faces (box of 0.3 of the canvas): pixels beyond radius 0.45 show background only.
    factors = W.WorldFactors(scale=(0.3, 0.3), translation=0.0, scene=scene, occluders=2 if scene else 0,
                             lighting=0.5 if scene else 0.0)
    generator = SyntheticGenerator(32, factors=factors)
    torch.manual_seed(0)
    w = generator.style(torch.randn(4, generator.style_dim)).unsqueeze(1).repeat(1, generator.n_latent, 1)
    turned = w.clone()
    turned[:, :generator.coarse_layers] = generator.style(torch.randn(4, generator.style_dim)).unsqueeze(1)
    noise = generator.make_noise(4)
    a, _ = generator([w], input_is_latent=True, noise=noise)
    b, _ = generator([turned], input_is_latent=True, noise=noise)
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 0.2  # the faces moved
    change = (_corners(a, 32, 0.45) - _corners(b, 32, 0.45)).abs().max()
    if scene:
        params = generator.world_params(w, noise=noise)
        assert 'occluders' in params and bool((params['occluders'][:, :, 0] > 0).any())
        assert change < 1e-3  # scene, occluders and light stay where they were (up to soft edges' tails)
    else:
        assert change > 0.1  # the face-frame background turns with the face: the control


def test_occluded_keypoints_are_invisible_and_show_the_occluder():
    params = sample(200, seed=3, scene=True, occluders=3)
    size = 64
    images, keypoints = W.render(params, size)
    normalised = (keypoints[..., :2] + 0.5) * 2 / size - 1
    on_canvas = ((keypoints[..., :2] >= 0) & (keypoints[..., :2] <= size - 1)).all(-1)
    depth = occluder_distance(params, normalised[..., 0], normalised[..., 1])
    hidden = on_canvas & (depth < 0)
    assert hidden.float().mean() > 0.05  # occluders cover a fair share of the keypoints
    assert (keypoints[..., 2][hidden] == 0).all()
    assert (keypoints[..., 2][on_canvas & (depth > 0)] == 1).all()
    # Deep inside an occluder the pixel shows the occluder's colour (the nearest one drawn last wins,
    # so compare with any present occluder's colour).
    deep = on_canvas & (depth < -3 * 2 / size)
    n, p = torch.nonzero(deep, as_tuple=True)
    x, y = keypoints[n, p, 0].round().long(), keypoints[n, p, 1].round().long()
    pixels = images[n, :, y, x]                                     # (M, 3)
    colors = params['occluder_colors'][n]                           # (M, 3 occluders, 3)
    present = params['occluders'][n, :, 0] > 0
    error = (pixels[:, None] - colors).abs().amax(-1).masked_fill(~present, 9).amin(-1)
    assert len(error) > 10 and (error < 0.02).float().mean() > 0.9


def test_lighting_changes_the_picture_but_not_the_geometry():
    plain = sample(8, seed=1, scene=True)
    lit = sample(8, seed=1, scene=True, lighting=1.0)
    a, ka = W.render(plain, 32)
    b, kb = W.render(lit, 32)
    assert torch.equal(ka, kb)
    assert (a - b).abs().mean() > 0.05
    # Per-image brightness moves each image's mean with the drawn brightness.
    shift = (b - a).mean(dim=(1, 2, 3))
    assert np.corrcoef(shift.numpy(), lit['lighting'][:, 0].numpy())[0, 1] > 0.7


@pytest.mark.parametrize('flags, phrase', [
    (['--synthetic_world', 'studio'], "unknown --synthetic_world preset 'studio'"),
    (['--synthetic_occluders', '4'], 'occluders must be an integer from 0 to 3'),
    (['--synthetic_lighting', '1.5'], 'lighting strength must be in [0, 1]'),
    (['--synthetic_scene', '--dataset_mode', 'image_folder', '--real_data_path', '.'],
     'describe(s) the photo world of --dataset_mode synthetic'),
], ids=['preset', 'occluders', 'lighting', 'dataset_mode'])
def test_bad_photo_world_flags_are_refused_before_anything_is_written(flags, phrase, train_refused):
    train_refused(flags, phrase)


@pytest.mark.parametrize('flags, phrase', [
    (['--synthetic', '--synthetic_world', 'studio'], "unknown --synthetic_world preset 'studio'"),
    (['--synthetic', '--synthetic_occluders', '-1'], 'occluders must be an integer from 0 to 3'),
    (['--path', '.', '--synthetic_lighting', '0.5'], 'apply to --synthetic only'),
], ids=['preset', 'occluders', 'not_synthetic'])
def test_prepare_data_refuses_bad_photo_world_flags(flags, phrase, tmp_path, capsys):
    import prepare_data
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        prepare_data.main([*flags, '--out', str(out), '--size', '16'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'error:' in message and phrase in message, message
    assert not out.exists()


def test_prepare_data_and_the_dataset_mode_render_the_same_photo_world(tmp_path):
    import prepare_data
    from datasets.keypoint_pairs import PCKDataset
    out = tmp_path / 'photo'
    assert prepare_data.main(['--synthetic', '--synthetic_world', 'photo', '--out', str(out), '--size', '16',
                              '--max_images', '4', '--seed', '7']) == 0
    images, keypoints = W.render_dataset(4, 16, seed=7, factors=PHOTO)
    stored = PCKDataset(str(out), 16)
    assert torch.allclose(stored.keypoints, keypoints)  # occlusion-aware visibility included
    assert ((stored.images[0] + 1) * 127.5 - torch.as_tensor(images[0]).permute(2, 0, 1).float()).abs().max() < 1


def test_the_photo_recipe_trains_end_to_end_and_prints_pck(tmp_path, tiny_configs):
    # The recipe script itself, its extra flags passed on (tiny settings, --results honoured).
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''),
               OMP_NUM_THREADS='1')
    flags = tiny_configs.synthetic + ['--results', str(tmp_path), '--iter', '3', '--anneal_psi', '1',
                                      '--period', '2', '--vis_every', '100', '--ckpt_every', '100']
    result = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'training', 'synthetic_photo.sh'), *flags],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '| 0.1 |' in result.stdout and 'identity baseline' in result.stdout
    run = tmp_path / 'synthetic_photo'
    with open(run / 'pck.json') as f:
        report = json.load(f)
    assert 0 <= report['pck']['0.1'] <= 1 and 0 <= report['identity_baseline']['0.1'] <= 1
    with open(run / 'synthetic_eval' / 'synthetic_world.json') as f:
        described = json.load(f)['factors']
    assert described == {**described, **WORLD_PRESETS['photo']} and described['scene'] is True
    with open(run / 'opt.json') as f:
        assert json.load(f)['options']['change_weighting'] > 0
    # The docs' picture of a checkpoint: inputs and their mean over congealed images and their mean.
    checkpoint = sorted((run / 'checkpoints').glob('*.pt'))[-1]
    figure = tmp_path / 'figure.png'
    result = subprocess.run([sys.executable, '-m', 'benchmarks.studies.photo_world_figure', str(checkpoint),
                             str(figure), '--columns', '3', '--mean_images', '6', '--upscale', '1'],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image
    with Image.open(figure) as picture:
        assert picture.size == (4 * (32 + 2) + 2, 2 * (32 + 2) + 2)
