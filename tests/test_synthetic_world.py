"""The synthetic world renderer (synthetic_world/) and its dataset mode."""
import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

import synthetic_world as W
from utils.errors import UserError


def sample(n, seed=0, **factors):
    return W.sample_params(n, torch.Generator().manual_seed(seed), W.WorldFactors(**factors))


def pixel_at(images, xy):
    """Bilinear colour (N, P, 3) of images (N, 3, S, S) at pixel coordinates xy (N, P, 2)."""
    size = images.shape[-1]
    grid = (xy + 0.5) * 2 / size - 1
    return F.grid_sample(images, grid.unsqueeze(2), align_corners=False)[..., 0].permute(0, 2, 1)


def test_keypoint_names_and_mirror_permutation():
    assert len(W.KEYPOINT_NAMES) >= 8
    perm = W.MIRROR_PERMUTATION
    assert torch.equal(perm[perm], torch.arange(len(perm)))  # an involution
    for i, name in enumerate(W.KEYPOINT_NAMES):
        partner = W.KEYPOINT_NAMES[perm[i]]
        assert partner == name.replace('left', 'RIGHT').replace('right', 'left').replace('RIGHT', 'right')


def test_render_shapes_range_and_keypoints():
    params = sample(3)
    images, keypoints = W.render(params, 40)
    assert images.shape == (3, 3, 40, 40) and keypoints.shape == (3, W.NUM_KEYPOINTS, 3)
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.1
    assert torch.allclose(keypoints, W.keypoints_from_params(params, 40))


def test_render_dataset_is_deterministic_and_prefix_stable():
    images, keypoints = W.render_dataset(5, 24, seed=3)
    again, again_keypoints = W.render_dataset(5, 24, seed=3, batch_size=2)
    assert images.dtype.name == 'uint8' and images.shape == (5, 24, 24, 3)
    assert keypoints.dtype == torch.float32 and keypoints.shape == (5, W.NUM_KEYPOINTS, 3)
    assert (images == again).all() and torch.equal(keypoints, again_keypoints)
    prefix, prefix_keypoints = W.render_dataset(2, 24, seed=3)
    assert (prefix == images[:2]).all() and torch.equal(prefix_keypoints, keypoints[:2])
    other, _ = W.render_dataset(5, 24, seed=4)
    assert (other != images).any()
    # Any index range can be drawn on its own (blocks of PARAM_BLOCK faces).
    late = W.indexed_params([W.PARAM_BLOCK + 1, 2], seed=3)
    early = W.indexed_params(range(W.PARAM_BLOCK + 2), seed=3)
    assert torch.equal(late['rotation'], early['rotation'][[W.PARAM_BLOCK + 1, 2]])


def test_same_faces_at_every_size_and_anti_aliasing():
    params = sample(3)
    small, small_keypoints = W.render(params, 32)
    large, large_keypoints = W.render(params, 128)
    # Keypoints: the same points, expressed at each resolution.
    assert torch.allclose((small_keypoints[..., :2] + 0.5) * 4 - 0.5, large_keypoints[..., :2], atol=1e-4)
    # Images: an anti-aliased render is close to the box-filtered large one.
    box = F.avg_pool2d(large, 4)
    assert (small - box).abs().mean() < 0.03


def test_edges_take_intermediate_values():
    params = W.canonical_params(1, W.WorldFactors(appearance=False, background=False))
    params['colors'][:, 0] = 1.0                   # white fur
    params['background'][:] = -1.0                 # black canvas
    params['stripes'][:, 3] = 0.0                  # no stripes
    size = 64
    images, keypoints = W.render(params, size)
    cheek_x, cheek_y = keypoints[0, W.KEYPOINT_NAMES.index('left_cheek'), :2].tolist()
    row = (images[0, 0, round(cheek_y)] + 1) / 2     # fur coverage along the row
    edge = math.floor(cheek_x)
    assert row[edge - 3] < 0.02 and row[edge + 4] > 0.98
    assert ((row[edge - 1:edge + 3] > 0.1) & (row[edge - 1:edge + 3] < 0.9)).any()
    # Moving the face by an eighth of a pixel changes the edge pixels' coverage
    # by about an eighth (a hard edge would jump from 0 to 1 or not at all).
    shifted = {k: v.clone() for k, v in params.items()}
    shifted['translation'][:, 0] += 0.25 / size
    moved, _ = W.render(shifted, size)
    moved_row = (moved[0, 0, round(cheek_y)] + 1) / 2
    change = (moved_row - row)[edge - 3:edge + 4].abs().max()
    assert 0.05 < change < 0.2


def test_keypoints_follow_the_pose():
    params = sample(4, mirror=False)
    before = W.keypoints_from_params(params, 64)[..., :2]
    delta_rot, scale_ratio, delta_t = 0.3, 0.85, torch.tensor([0.04, -0.03])
    moved = {k: v.clone() for k, v in params.items()}
    moved['rotation'] += delta_rot
    moved['scale'] *= scale_ratio
    moved['translation'] += delta_t
    _, after = W.render(moved, 64)
    # Analytically: p' = 2 t' + (s' / s) R(delta) (p - 2 t) in normalised coordinates.
    p = (before + 0.5) * 2 / 64 - 1
    c, s = math.cos(delta_rot), math.sin(delta_rot)
    rot = torch.tensor([[c, -s], [s, c]])
    centred = p - 2 * params['translation'][:, None]
    expected = 2 * moved['translation'][:, None] + scale_ratio * centred @ rot.T
    expected = (expected + 1) * 64 / 2 - 0.5
    assert torch.allclose(after[..., :2], expected, atol=1e-4)


def test_keypoints_are_drawn_where_the_parts_are():
    # With canonical appearance the pupils (dark) sit on the eye keypoints and the
    # nose triangle (nose colour) on the nose keypoint, whatever the pose and shape.
    factors = W.WorldFactors(appearance=False, background=False, mirror=True)
    params = sample(4, seed=1, appearance=False, background=False)
    params['scale'] = params['scale'].clamp(min=0.75)
    images, keypoints = W.render(params, 256)
    colors = dict(zip(W.COLOR_NAMES, W.canonical_params(1, factors)['colors'][0]))
    for name, color in (('left_eye', 'dark'), ('right_eye', 'dark'), ('nose', 'nose')):
        index = W.KEYPOINT_NAMES.index(name)
        drawn = pixel_at(images, keypoints[:, index:index + 1, :2])[:, 0]
        assert (drawn - colors[color]).abs().max() < 0.1, name


def test_shape_changes_are_not_a_similarity_transform():
    # The best similarity fit of one face's keypoints onto another's leaves a
    # residual: shape factors move parts relative to each other.
    params = sample(50, rotation=0, translation=0, scale=(0.8, 0.8), mirror=False)
    canonical = W.canonical_keypoints(64)[:, :2]
    keypoints = W.keypoints_from_params(params, 64)[..., :2]
    a = torch.complex(canonical[:, 0], canonical[:, 1])
    a = a - a.mean()
    residuals = []
    for face in keypoints:
        b = torch.complex(face[:, 0], face[:, 1])
        b = b - b.mean()
        fit = (a.conj() * b).sum() / (a.conj() * a).sum() * a  # least-squares rotation + scale
        residuals.append((b - fit).abs().pow(2).mean().sqrt())
    residuals = torch.stack(residuals)
    assert residuals.median() > 0.5  # pixels, at 64 x 64
    assert W.SHAPE_NAMES and len(W.SHAPE_NAMES) == params['shape'].shape[1]


def test_visibility_marks_points_off_the_canvas():
    params = W.canonical_params(1)
    params['scale'][:] = 1.0
    params['translation'][:, 0] = 0.45            # shifted far right
    _, keypoints = W.render(params, 32)
    visible = dict(zip(W.KEYPOINT_NAMES, keypoints[0, :, 2].tolist()))
    assert visible['right_cheek'] == 0 and visible['right_ear_tip'] == 0
    assert visible['left_cheek'] == 1 and visible['left_eye'] == 1
    # In general: visible exactly when inside [0, S - 1].
    keypoints = W.keypoints_from_params(sample(300, translation=0.4, scale=(1.0, 1.2)), 32)
    inside = ((keypoints[..., :2] >= 0) & (keypoints[..., :2] <= 31)).all(-1).float()
    assert torch.equal(keypoints[..., 2], inside)
    assert 0 < inside.mean() < 1


def test_mirroring_flips_the_image_and_permutes_keypoints():
    params = sample(3, seed=2, background=False)
    params['mirror'][:] = 1.0
    twin = {k: v.clone() for k, v in params.items()}
    twin['mirror'][:] = 0.0
    twin['rotation'] = -params['rotation']
    twin['translation'][:, 0] = -params['translation'][:, 0]
    images, keypoints = W.render(params, 48)
    twin_images, twin_keypoints = W.render(twin, 48)
    assert torch.allclose(images, twin_images.flip(-1), atol=1e-4)
    assert torch.allclose(keypoints, W.flip_keypoints(twin_keypoints, 48), atol=1e-4)
    # The marking makes a mirrored face different from the unmirrored one.
    upright = W.canonical_params(1, W.WorldFactors(background=False))
    mirrored = {k: v.clone() for k, v in upright.items()}
    mirrored['mirror'][:] = 1.0
    assert (W.render(upright, 48)[0] - W.render(mirrored, 48)[0]).abs().max() > 0.5


def test_factor_ranges_and_switches():
    params = sample(2000)
    assert params['rotation'].abs().max() <= math.radians(45) + 1e-6
    assert params['rotation'].abs().max() > math.radians(43)
    assert 0.6 <= params['scale'].min() and params['scale'].max() <= 1.0
    assert params['translation'].abs().max() <= 0.15 + 1e-6
    assert params['shape'].abs().max() <= 0.15 + 1e-6 and params['shape'].abs().max() > 0.14
    assert 0.4 < params['mirror'].mean() < 0.6
    assert params['colors'].std(dim=0).min() > 0.05
    fixed = sample(50, rotation=0, scale=(0.7, 0.7), translation=0, mirror=False, shape=0,
                   appearance=False, background=False)
    assert (fixed['rotation'] == 0).all() and torch.allclose(fixed['scale'], torch.tensor(0.7))
    assert (fixed['translation'] == 0).all() and (fixed['mirror'] == 0).all() and (fixed['shape'] == 0).all()
    assert (fixed['colors'] == fixed['colors'][:1]).all()
    assert (fixed['distractor_opacity'] == 0).all() and (fixed['background_noise_strength'] == 0).all()
    assert (sample(20, distractors=1)['distractor_opacity'].sum(1) == 1).all()


def test_bad_factors_and_arguments_raise_user_errors():
    for bad in (dict(rotation=-1), dict(scale=(0.9, 0.5)), dict(translation=0.8), dict(distractors=4)):
        with pytest.raises(UserError):
            W.WorldFactors(**bad).validate()
    with pytest.raises(UserError):
        W.render(sample(1), 0)
    with pytest.raises(UserError):
        W.render_dataset(2, 16, seed=-1)


def test_world_options_parse_into_factors():
    parser = argparse.ArgumentParser()
    W.add_world_options(parser)
    W.add_world_options(parser)  # a second component adding them is fine
    opt = parser.parse_args(['--synthetic_rotation', '10', '--synthetic_scale', '0.5', '0.9',
                             '--synthetic_no_mirror', '--synthetic_distractors', '1'])
    factors = W.factors_from_options(opt)
    assert factors == W.WorldFactors(rotation=10, scale=(0.5, 0.9), mirror=False, distractors=1)
    with pytest.raises(UserError):
        W.factors_from_options(parser.parse_args(['--synthetic_shape', '2']))


def test_render_is_differentiable():
    params = sample(2)
    params['rotation'].requires_grad_(True)
    params['colors'].requires_grad_(True)
    images, _ = W.render(params, 32)
    images.square().sum().backward()
    assert params['rotation'].grad.abs().min() > 0
    assert params['colors'].grad.abs().sum() > 0


# ---------------------------------------------------------------------------- dataset mode

def mode_options(tmp_path, *args):
    from datasets.modes.synthetic import SyntheticMode
    parser = argparse.ArgumentParser()
    parser.add_argument('--real_size', type=int, default=32)
    parser.add_argument('--results', default=str(tmp_path))
    parser.add_argument('--exp_name', default='exp')
    SyntheticMode.modify_commandline_options(parser, True)
    return parser.parse_args(list(args))


def test_dataset_mode_images_match_rendered_dataset(tmp_path):
    from datasets.modes import DATASET_MODES
    mode = DATASET_MODES.get('synthetic')
    opt = mode_options(tmp_path, '--synthetic_num_images', '3')
    train = mode.build_images(opt, 'train')
    assert len(train) == 3
    item = train[2]
    assert item.shape == (3, 32, 32) and item.min() >= -1 and item.max() <= 1
    expected, _ = W.render_dataset(3, 32, opt.synthetic_seed, W.factors_from_options(opt))
    expected = torch.from_numpy(expected[2]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(item, expected, atol=1e-5)
    assert not torch.allclose(mode.build_images(opt, 'test')[2], item)
    with pytest.raises(IndexError):
        train[3]
    # A DataLoader fetches whole batches in one render; they hold the same faces.
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert torch.allclose(batch, torch.stack([train[i] for i in range(3)]), atol=1e-5)
    with pytest.raises(IndexError):
        train.__getitems__([0, 3])


def test_dataset_mode_pck_set_is_written_once_and_read_back(tmp_path):
    from datasets.modes import DATASET_MODES
    mode = DATASET_MODES.get('synthetic')
    opt = mode_options(tmp_path, '--synthetic_eval_images', '6')
    dataset = mode.build_pck(opt)
    folder = os.path.join(str(tmp_path), 'exp', 'synthetic_eval')
    assert os.path.isfile(os.path.join(folder, 'synthetic_world.json'))
    assert not [name for name in os.listdir(tmp_path / 'exp') if name.startswith('.')]  # no staging left
    assert len(dataset) == 3
    _, keypoints = W.render_dataset(6, 32, opt.synthetic_seed + 1, W.factors_from_options(opt))
    item = dataset[1]
    assert (item['indexA'], item['indexB']) == (2, 3)
    assert torch.allclose(item['kpsA'], keypoints[2, :, :2], atol=1e-5)
    assert torch.equal(item['visB'], keypoints[3, :, 2] > 0)
    assert torch.equal(dataset.permutation, W.MIRROR_PERMUTATION)
    stamp = os.path.getmtime(os.path.join(folder, 'keypoints.pt'))
    mode.build_pck(opt)  # same description: reused
    assert os.path.getmtime(os.path.join(folder, 'keypoints.pt')) == stamp
    bigger = mode.build_pck(mode_options(tmp_path, '--synthetic_eval_images', '8'))
    assert len(bigger) == 4
