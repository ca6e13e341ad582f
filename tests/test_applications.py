"""Applications end to end on a tiny synthetic dataset and a hand-set transformer.

The transformer is a small similarity + flow STN whose similarity stage is set
to a pure shift of +0.25 in normalised units (4 pixels at 32 x 32) and whose
flow stage is the identity, so where every image pixel and label pixel must
go is known exactly.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from applications.common.models import determine_flips, load_stn, stn_architecture
from applications.common.propagation import (Label, align, load_label, points_through_warp, propagate,
                                             propagate_aligned, propagation_argparse, uncongeal_template_points)
from applications.pck import pck_argparse
from applications.propagate_to_images import main as propagate_main
from datasets.lmdb_dataset import write_lmdb_dataset
from datasets.keypoint_pairs import write_pck_files
from models import get_stn
from models.spatial_transformers import flow_total_variation
from tests.conftest import subprocess_env
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from options import parse_eval_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
SHIFT_PIXELS = 4
NUM_IMAGES = 8
# Two keypoint layouts: kp1 agrees, kp0 and kp2 are 20 pixels apart.
LAYOUT_X = [(6, 6), (16, 16), (26, 26)]
LAYOUT_Y = [(26, 6), (16, 16), (6, 26)]
PAIRS = [(0, 1), (2, 3), (0, 2), (1, 3), (4, 5), (6, 7)]


def make_images():
    """uint8 (N, S, S, 3): red 0, green by image, blue a horizontal ramp plus a per-image bump."""
    images = np.zeros((NUM_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)
    ramp = np.linspace(0, 200, SIZE).astype(np.uint8)
    for i in range(NUM_IMAGES):
        images[i, :, :, 1] = 30 * i
        images[i, :, :, 2] = ramp[None, :]
        images[i, 8 + i:12 + i, 10:14, 2] = 255
    return images


def make_stn():
    t = get_stn(['similarity', 'flow'], flow_size=16, supersize=SIZE, channel_multiplier=0.5, max_channels=32)
    with torch.no_grad():
        # Parameters (rotation, log-scale, shift x, shift y): shift x by a quarter of the half-width.
        t.state_dict()['stns.0.warp_head.linear.bias'].copy_(torch.tensor([0.0, 0.0, 0.25, 0.0]))
    return t


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('apps')
    data = str(root / 'data')
    images = make_images()
    write_lmdb_dataset(data, {SIZE: images})
    keypoints = torch.zeros(NUM_IMAGES, 3, 3)
    for i in range(NUM_IMAGES):
        keypoints[i, :, :2] = torch.tensor(LAYOUT_X if i % 2 == 0 else LAYOUT_Y, dtype=torch.float32)
        keypoints[i, :, 2] = 1
    keypoints[5, 2, 2] = 0  # hidden: pair (4, 5) counts two keypoints
    write_pck_files(data, keypoints, torch.tensor(PAIRS), permutation=[2, 1, 0], keypoint_size=SIZE)

    t = make_stn()
    state = t.state_dict()
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=16, real_size=SIZE, gen_size=SIZE,
                              stn_channel_multiplier=0.5, num_heads=1, padding_mode='border')
    ckpt = {'g_ema': {}, 't': state, 't_ema': state, 't_optim': {}, 't_sched': {}, 'll': {},
            'll_optim': {}, 'll_sched': {}, 'args': args, 'iteration': 0, 'rng_state': {},
            'format_version': 1}
    ckpt_path = save_checkpoint(ckpt, str(root / 'stn.pt'))
    bare_path = save_checkpoint({'t_ema': state}, str(root / 'bare.pt'))

    label = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    label[12:16, 10:14] = (255, 0, 0, 255)  # a red square at template x 10..13, y 12..15
    label_path = str(root / 'label.png')
    Image.fromarray(label, 'RGBA').save(label_path)
    return dict(root=root, data=data, images=images, keypoints=keypoints, ckpt=ckpt_path, bare=bare_path,
                label=label_path, state=state)


pytestmark = pytest.mark.usefixtures('one_thread')  # tiny tensors: extra threads only add contention


def run_module(module, *args):
    """Run ``python -m module args`` from the repository root, outside any launcher."""
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def read_png(path):
    return np.asarray(Image.open(path).convert('RGB')).astype(np.int64)


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_propagate_to_images_end_to_end(world):
    out = world['root'] / 'visuals'
    result = run_module('applications.propagate_to_images', '--ckpt', world['ckpt'], '--real_data_path',
                        world['data'], '--real_size', SIZE, '--n_mean', 6, '--label_path', world['label'],
                        '--objects', '--resolution', SIZE, '-s', 0.5, '-o', 1.0, '--dset_indices', 1, 3, 6,
                        '--save_individual_images', '--batch', 2, '--num_workers', 0, '--device', 'cpu',
                        '--out', out)
    assert result.returncode == 0, result.stderr
    expected = {'average.png', 'input_images_grid.png', 'congealed_images_grid.png', 'propagated_grid.png',
                'average_annotated_grid.png', 'average_annotated/000.png'}
    for kind in ('input_images', 'congealed_images', 'propagated'):
        expected |= {f'{kind}/{i:03}.png' for i in range(3)}
    assert set(all_files(out)) == expected  # nothing else, no temporary files left

    images = world['images'].astype(np.int64)
    for position, index in enumerate([1, 3, 6]):
        assert (read_png(out / 'input_images' / f'{position:03}.png') == images[index]).all()
        congealed = read_png(out / 'congealed_images' / f'{position:03}.png')
        # The template shows the image moved left by 4 pixels (border pixels repeat at the right).
        source_columns = np.minimum(np.arange(SIZE) + SHIFT_PIXELS, SIZE - 1)
        # (A one-pixel error would change the blue ramp by 6 levels everywhere; the
        # anti-aliased sampler may blur the odd edge pixel slightly.)
        difference = np.abs(congealed - images[index][:, source_columns])
        assert difference.max() <= 4 and difference.mean() < 0.1
        propagated = read_png(out / 'propagated' / f'{position:03}.png')
        red = propagated[..., 0]
        # The label's square (template x 10..13, y 12..15) lands 4 pixels right, fully opaque red.
        assert (red[12:16, 14:18] == 255).all()
        assert (propagated[12:16, 14:18, 1:] == 0).all()
        outside = np.ones((SIZE, SIZE), dtype=bool)
        outside[11:17, 13:19] = False  # the square plus the splat's one-pixel reach
        assert (red[outside] == 0).all()
        assert (propagated[outside] == images[index][outside]).all()

    # The average of the first 6 congealed images, stretched to the full range.
    shifted = images[:6][:, :, np.minimum(np.arange(SIZE) + SHIFT_PIXELS, SIZE - 1)].astype(np.float64)
    mean = shifted.mean(axis=0)
    stretched = (mean - mean.min()) / (mean.max() - mean.min()) * 255
    difference = np.abs(read_png(out / 'average.png') - stretched)
    assert difference.max() <= 6 and difference.mean() < 0.5
    annotated = read_png(out / 'average_annotated' / '000.png')
    assert (annotated[12:16, 10:14, 0] == 255).all()  # the label drawn where it is in the template
    grid = read_png(out / 'propagated_grid.png')
    assert grid.shape == (3 + 3 * (SIZE + 3), 3 + (SIZE + 3), 3)  # int(sqrt(3)) = 1 image per row
    for position in range(3):
        top = 3 + position * (SIZE + 3)
        tile = grid[top:top + SIZE, 3:3 + SIZE]
        assert (tile == read_png(out / 'propagated' / f'{position:03}.png')).all()


def pck_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 3 and cells[1].endswith('%'):
            rows[float(cells[0])] = (float(cells[1][:-1]), float(cells[2][:-1]))
    return rows


def test_pck_end_to_end(world):
    out = world['root'] / 'pck'
    result = run_module('applications.pck', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--real_size', SIZE, '--alphas', 0.5, 0.1, 0.01, '--vis_transfer', '--num_bootstrap', 20,
                        '--batch', 4, '--num_workers', 0, '--device', 'cpu', '--out', out)
    assert result.returncode == 0, result.stderr
    assert '| alpha | PCK-Transfer | identity baseline |' in result.stdout
    rows = pck_rows(result.stdout)
    assert set(rows) == {0.5, 0.1, 0.01}
    # Baseline by hand: (0,2) and (1,3) share a layout (3 of 3 correct); (0,1), (2,3), (6,7)
    # and (4,5) (kp2 of 5 hidden) match only kp1: 3 + 3 + 1 + 1 + 1 + 1 = 10 of 17 keypoints.
    assert rows[0.5][1] == pytest.approx(100 * 10 / 17, abs=0.01)
    assert rows[0.1][1] == pytest.approx(100 * 10 / 17, abs=0.01)
    # The transformer carries keypoints through the template and back: a transfer
    # that is the identity up to the 16-pixel grid's rounding.
    assert rows[0.5][0] == rows[0.5][1] and rows[0.1][0] == rows[0.1][1]
    assert 'PCK-Transfer on 6 pairs (17 keypoints)' in result.stdout
    assert 'std of PCK-Transfer' in result.stdout
    record = json.loads((out / 'pck.json').read_text())
    assert record['pairs'] == 6 and record['keypoints'] == 17
    assert record['pck']['0.5'] == pytest.approx(10 / 17)
    assert set(record['bootstrap_std']) == {'0.5', '0.1', '0.01'}
    assert set(all_files(out)) == {'pck.json', 'transfers/transfer_grid.png', 'transfers/congealed.png'}
    picture = read_png(out / 'transfers' / 'transfer_grid.png')
    assert picture.shape == (3 + 2 * (256 + 3), 3 + 6 * (256 + 3), 3)  # 32-pixel images drawn at 256


def single_error_line(result):
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_missing_checkpoint_and_missing_data_exit_cleanly(world, tmp_path, capsys):
    missing_ckpt = run_module('applications.pck', '--ckpt', tmp_path / 'nope.pt', '--real_data_path',
                              world['data'], '--real_size', SIZE, '--device', 'cpu', '--out', tmp_path / 'o1')
    assert 'nope.pt' in single_error_line(missing_ckpt)
    # The same entry point in this process: SystemExit(1) and one error line.
    with pytest.raises(SystemExit) as info:
        propagate_main(['--ckpt', world['ckpt'], '--real_data_path', str(tmp_path / 'no_data'),
                        '--real_size', str(SIZE), '--device', 'cpu', '--out', str(tmp_path / 'o2')])
    assert info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'no_data' in errors[0]
    assert not (tmp_path / 'o1').exists() and not (tmp_path / 'o2').exists()


def parse(parser, *argv):
    return parse_eval_options(parser, [str(a) for a in argv], verbose=False)


def test_load_stn_takes_the_architecture_from_the_checkpoint(world):
    opt = parse(pck_argparse(), '--ckpt', world['ckpt'], '--real_size', SIZE)
    t = load_stn(opt, torch.device('cpu'))
    assert (opt.transform, opt.flow_size, opt.num_heads) == (['similarity', 'flow'], 16, 1)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    loaded = t.state_dict()
    for name, value in world['state'].items():
        torch.testing.assert_close(loaded[name], value)


def test_load_stn_rejects_flags_of_another_architecture(world):
    opt = parse(propagation_argparse(), '--ckpt', world['ckpt'], '--real_size', SIZE, '--flow_size', 32)
    with pytest.raises(UserError) as info:
        load_stn(opt, torch.device('cpu'))
    assert 'flow_size=16' in str(info.value) and 'flow_size=32' in str(info.value)
    # Without recorded options the flags decide; weights of another architecture are refused.
    opt = parse(pck_argparse(), '--ckpt', world['bare'], '--real_size', SIZE, '--flow_size', 16,
                '--transform', 'flow')
    with pytest.raises(UserError) as info:
        load_stn(opt, torch.device('cpu'))
    assert 'flow' in str(info.value)
    opt = parse(pck_argparse(), '--ckpt', world['bare'], '--real_size', SIZE, '--flow_size', 16)
    assert load_stn(opt, torch.device('cpu')).stn_in_size == 16
    flags = argparse.Namespace(ckpt='x.pt', transform=None, flow_size=None, stn_channel_multiplier=0.25,
                               num_heads=None)
    assert stn_architecture(flags, {'args': {'flow_size': 32, 'transform': 'flow'}}) == {
        'transform': ['flow'], 'flow_size': 32, 'stn_channel_multiplier': 0.25, 'num_heads': 1}


def test_determine_flips(world):
    t = make_stn()
    images = torch.from_numpy(world['images'][:3]).permute(0, 3, 1, 2).float() / 127.5 - 1
    inputs, mirrored = determine_flips(t, images, flip_inference=False)
    assert inputs is images and mirrored.tolist() == [False] * 3
    torch.manual_seed(0)
    with torch.no_grad():  # a flow that depends on the image, so an image and its mirror differ
        t.stns[1].warp_head.flow_out[-1].weight.normal_(0, 0.5)
    images[1] = images[0].flip(2)  # a mirrored pair: exactly one of the two is mirrored back
    inputs, mirrored = determine_flips(t, images, flip_inference=True, padding_mode='border')
    assert mirrored.shape == (3,) and mirrored.dtype == torch.bool
    torch.testing.assert_close(inputs, torch.where(mirrored.view(-1, 1, 1, 1), images.flip(3), images))
    roughness = [flow_total_variation(t(x, return_flow=True, padding_mode='border')[1])
                 for x in (images, images.flip(3))]
    assert mirrored.tolist() == (roughness[1] < roughness[0]).tolist()
    assert mirrored[0] != mirrored[1]
    torch.testing.assert_close(inputs[0], inputs[1])


@pytest.mark.parametrize('flip_inference', [True, False])
def test_align_reuses_the_flip_passes_with_identical_results(world, flip_inference):
    t = make_stn().eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a flow that depends on the image, so an image and its mirror differ
        t.stns[1].warp_head.flow_out[-1].weight.normal_(0, 0.5)
    images = torch.from_numpy(world['images'][:4]).permute(0, 3, 1, 2).float() / 127.5 - 1
    images[1] = images[0].flip(2)
    opt = argparse.Namespace(padding_mode='reflection', iters=1, no_flip_inference=not flip_inference,
                             output_resolution=24, num_heads=1, cluster=None, sigma=1.3, opacity=0.75)
    template = torch.rand(30, 2) * 1.8 - 0.9
    label = Label(torch.rand(30, 2) * 15, torch.rand(30, 3) * 2 - 1, torch.rand(30, 1), 16)
    alignment = align(t, opt, images)
    # The separate passes it replaces: flip decision, congealing, then the point map.
    inputs, mirrored = determine_flips(t, images, flip_inference=flip_inference, padding_mode='reflection')
    assert mirrored[0] != mirrored[1] if flip_inference else not mirrored.any()
    assert torch.equal(alignment.inputs, inputs) and torch.equal(alignment.mirrored, mirrored)
    assert torch.equal(alignment.congealed, t(inputs, output_resolution=24, padding_mode='reflection'))
    found = t.uncongeal_points(inputs, template.expand(4, -1, -1), padding_mode='reflection')
    found[..., 0] = torch.where(mirrored.view(4, 1), SIZE - 1 - found[..., 0], found[..., 0])
    assert torch.equal(points_through_warp(t, alignment.warp, alignment.mirrored, template, SIZE), found)
    assert torch.equal(uncongeal_template_points(t, opt, inputs, mirrored, 'cartesian', template), found)
    assert torch.equal(propagate_aligned(t, opt, images, alignment, label),
                       propagate(t, opt, images, inputs, mirrored, 'cartesian', label))
    # mixed_reality reads the grid at the output resolution.
    found_24, congealed_24 = uncongeal_template_points(t, opt, inputs, mirrored, 'cartesian', template,
                                                       output_resolution=24)
    assert torch.equal(congealed_24, alignment.congealed)
    assert torch.equal(points_through_warp(t, alignment.warp, mirrored, template, SIZE, output_resolution=24),
                       found_24)
    assert not torch.equal(found_24, found)


def test_load_label_variants(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[2, 5] = (255, 0, 255, 128)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'edit.png')
    points, colours, alpha = load_label(str(tmp_path / 'edit.png'), 8, objects=True, device='cpu')
    assert points.tolist() == [[5.0, 2.0]]
    torch.testing.assert_close(colours, torch.tensor([[1.0, -1.0, 1.0]]))
    assert alpha.item() == pytest.approx(128 / 255)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1:3, 4:6] = 255
    Image.fromarray(mask, 'L').save(tmp_path / 'mask.png')
    points, colours, alpha = load_label(str(tmp_path / 'mask.png'), 16, objects=False, device='cpu')
    assert points.size(0) >= 16 and (alpha == 1).all() and colours.shape == (points.size(0), 3)
    assert points[:, 0].min() >= 7 and points[:, 0].max() <= 12  # resampled to 16 pixels
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), 'L').save(tmp_path / 'empty.png')
    with pytest.raises(UserError):
        load_label(str(tmp_path / 'empty.png'), 8, objects=False, device='cpu')
