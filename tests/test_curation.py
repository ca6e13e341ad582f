"""Dataset curation end to end: flow_scores, --flow_scores/--fraction_retained, congeal_dataset.

Data: the synthetic world rendered by prepare_data at 32 x 32. Transformer: a
tiny similarity + flow STN whose similarity stage is set to a centred zoom of
exactly 1/2 (so a 16 x 16 output is the image's central 16 x 16 pixels, pixel
for pixel) and whose flow stage has random weights (so flows, and hence
scores, differ from image to image).
"""
import argparse
import json
import math
import os

import numpy as np
import pytest
import torch

from applications.common.image_scores import MISFIT_PARTS
from datasets.lmdb_dataset import MultiResolutionDataset
from models import get_stn
from models.spatial_transformers import flow_total_variation
from tests.test_applications import run_module
from utils.checkpoint import save_checkpoint
from utils.score_files import file_sha256, high_score_indices, load_flow_scores, save_flow_scores
from utils.errors import UserError

SIZE = 32
NUM_IMAGES = 10


def make_stn(zoom=0.5, shift=0.0):
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights at every call
        return _make_stn(zoom, shift)


def _make_stn(zoom, shift):
    t = get_stn(['similarity', 'flow'], flow_size=16, supersize=SIZE, channel_multiplier=0.5, max_channels=32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        t.stns[0].warp_head.linear.bias.copy_(torch.tensor([0.0, math.log(zoom), shift, 0.0]))
        weight = t.stns[1].warp_head.flow_out[-1].weight
        weight.copy_(torch.randn(weight.shape, generator=gen) * 2)
    return t.eval()


def save_stn(t, path, transform=('similarity', 'flow')):
    state = t.state_dict()
    args = argparse.Namespace(transform=list(transform), flow_size=16, real_size=SIZE, gen_size=SIZE,
                              stn_channel_multiplier=0.5, num_heads=1, padding_mode='border')
    return save_checkpoint({'t_ema': state, 'args': args}, str(path))


def error_line(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr
    return lines[-1]


# float32 trunks: the outputs are compared with the transformer run here in float32.
COMMON = ('--real_size', SIZE, '--batch', 4, '--num_workers', 0, '--device', 'cpu', '--precision', 'fp32')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('curation')
    data = root / 'data'
    result = run_module('prepare_data', '--synthetic', '--size', SIZE, '--max_images', NUM_IMAGES,
                        '--seed', 3, '--out', data)
    assert result.returncode == 0, result.stderr
    ckpt = save_stn(make_stn(), root / 'stn.pt')
    dataset = MultiResolutionDataset(str(data), SIZE)
    images = torch.stack([dataset[i] for i in range(len(dataset))])
    return dict(root=root, data=data, ckpt=ckpt, images=images)


def expected_scores(images):
    """-(total variation of the smoother of each image's and its mirror's flow)."""
    t = make_stn()
    with torch.no_grad():
        plain = flow_total_variation(t(images, return_flow=True, padding_mode='border')[1])
        mirrored = flow_total_variation(t(images.flip(3), return_flow=True, padding_mode='border')[1])
    return -torch.minimum(plain, mirrored), mirrored < plain


def test_high_score_indices():
    scores = torch.tensor([5.0, 0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0])
    # The 0.5 quantile is 4.5: the five best remain, in dataset order.
    assert high_score_indices(scores, 0.5).tolist() == [0, 2, 4, 6, 8]
    assert high_score_indices(scores, 0.9).tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert high_score_indices(scores, 1.0).tolist() == list(range(10))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError, match='fraction_retained'):
            high_score_indices(scores, bad)


def test_load_flow_scores_checks_the_file(tmp_path):
    path = save_flow_scores(torch.arange(4.0), str(tmp_path / 'scores.pt'))
    assert load_flow_scores(path, 4).tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(UserError, match='hold 4 scores but the dataset has 5 images'):
        load_flow_scores(path, 5)
    torch.save(torch.zeros(2, 2), str(tmp_path / 'matrix.pt'))
    with pytest.raises(UserError, match='1-D float tensor'):
        load_flow_scores(str(tmp_path / 'matrix.pt'))
    with pytest.raises(UserError, match='do not exist'):
        load_flow_scores(str(tmp_path / 'missing.pt'))


def test_flow_scores_end_to_end(world):
    path = world['data'] / 'flow_scores.pt'
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        *COMMON)
    assert result.returncode == 0, result.stderr
    scores = torch.load(path, weights_only=True)
    assert scores.shape == (NUM_IMAGES,) and scores.dtype == torch.float32
    expected, _ = expected_scores(world['images'])
    torch.testing.assert_close(scores, expected, rtol=1e-3, atol=1e-9)
    assert scores.std() > 0 and (scores <= 0).all()

    # The record beside it says what made it; a second run with the same checkpoint reuses the file.
    record = json.loads((world['data'] / 'flow_scores.json').read_text())
    assert record['score'] == 'flow' and record['images'] == NUM_IMAGES
    assert record['checkpoint_sha256'] == file_sha256(world['ckpt'])
    assert record['options']['iters'] == 1 and record['options']['flip_inference'] is True
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        *COMMON)
    assert result.returncode == 0 and 'already computed' in result.stdout

    # A file without a record (the original's, or another tool's) is computed again, saying why;
    # so is one made with other options.
    save_flow_scores(torch.full((NUM_IMAGES,), -7.0), str(path))
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        *COMMON)
    assert result.returncode == 0 and 'has no record of what made it' in result.stdout
    torch.testing.assert_close(torch.load(path, weights_only=True), expected, rtol=1e-3, atol=1e-9)
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--no_flip_inference', *COMMON)
    assert result.returncode == 0 and 'flip_inference=True, now flip_inference=False' in result.stdout
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--recompute', *COMMON)
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(torch.load(path, weights_only=True), expected, rtol=1e-3, atol=1e-9)


def test_other_scores_and_stale_files(world, tmp_path):
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--score', 'misfit', '--recompute', *COMMON)
    assert result.returncode == 0, result.stderr
    path = world['data'] / 'misfit_scores.pt'
    misfit = torch.load(path, weights_only=True)
    assert misfit.shape == (NUM_IMAGES,) and torch.isfinite(misfit).all() and misfit.std() > 0
    record_path = world['data'] / 'misfit_scores.json'
    record = json.loads(record_path.read_text())
    assert record['score'] == 'misfit' and record['options']['misfit_parts'] == list(MISFIT_PARTS)
    # A misfit file made of other parts (an older composition) is computed again, saying why.
    record['options']['misfit_parts'] = ['flow']
    record_path.write_text(json.dumps(record))
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--score', 'misfit', *COMMON)
    assert result.returncode == 0 and "made with misfit_parts=['flow']" in result.stdout, result.stderr
    assert json.loads(record_path.read_text())['options']['misfit_parts'] == list(MISFIT_PARTS)
    torch.testing.assert_close(torch.load(path, weights_only=True), misfit)
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--score', 'mean_distance', *COMMON)
    assert result.returncode == 0, result.stderr
    assert json.loads((world['data'] / 'mean_distance_scores.json').read_text())['options']['loss_fn'] == 'laplacian'

    # Any score file filters the dataset, with the checkpoint that made it.
    out = tmp_path / 'aligned'
    result = run_module('applications.congeal_dataset', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--out', out, '--output_resolution', 16, '--min_effective_resolution', 12,
                        '--flow_scores', path, '--fraction_retained', 0.5, *COMMON)
    assert result.returncode == 0, result.stderr
    kept = high_score_indices(misfit, 0.5)
    assert torch.load(out / 'dataset_indices.pt', weights_only=True).tolist() == kept.tolist()

    # With another model's checkpoint, the scores are stale: refused before any output.
    other = save_stn(make_stn(zoom=0.6), tmp_path / 'other.pt')
    result = run_module('applications.congeal_dataset', '--ckpt', other, '--real_data_path', world['data'],
                        '--out', tmp_path / 'other_out', '--flow_scores', path, '--fraction_retained', 0.5, *COMMON)
    line = error_line(result)
    assert line.startswith('error: stale scores:') and 'made with another checkpoint' in line
    assert not (tmp_path / 'other_out').exists()
    # A score file replaced under its record is refused too.
    torch.save(torch.zeros(NUM_IMAGES), str(path))
    result = run_module('applications.propagate_to_images', '--ckpt', world['ckpt'], '--real_data_path',
                        world['data'], '--out', tmp_path / 'v', '--flow_scores', path, '--fraction_retained', 0.5,
                        *COMMON)
    assert 'describes other scores' in error_line(result) and not (tmp_path / 'v').exists()

    # An unknown score, and a checkpoint without a transformer: refused, nothing written.
    before = sorted(os.listdir(world['data']))
    result = run_module('applications.flow_scores', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--score', 'smoothness', *COMMON)
    assert result.returncode == 2 and "invalid choice: 'smoothness'" in result.stderr
    torch.save({'g_ema': {}}, str(tmp_path / 'generator_only.pt'))
    result = run_module('applications.flow_scores', '--ckpt', tmp_path / 'generator_only.pt', '--real_data_path',
                        world['data'], *COMMON)
    assert 'has no spatial transformer' in error_line(result)
    assert sorted(os.listdir(world['data'])) == before


def test_flow_scores_refuses_a_transformer_without_flow(world, tmp_path):
    t = get_stn(['similarity'], flow_size=16, supersize=SIZE, channel_multiplier=0.5, max_channels=32)
    ckpt = save_stn(t, tmp_path / 'sim.pt', transform=('similarity',))
    result = run_module('applications.flow_scores', '--ckpt', ckpt, '--real_data_path', world['data'],
                        '--recompute', *COMMON)
    assert error_line(result).startswith('error:') and 'no flow stage' in result.stderr


def test_propagate_to_images_with_flow_scores(world, tmp_path):
    scores, _ = expected_scores(world['images'])
    scores_path = save_flow_scores(scores, str(tmp_path / 'scores.pt'))
    kept = high_score_indices(scores, 0.5)
    out = tmp_path / 'visuals'
    result = run_module('applications.propagate_to_images', '--ckpt', world['ckpt'], '--real_data_path',
                        world['data'], '--flow_scores', scores_path, '--fraction_retained', 0.5,
                        '--save_individual_images', '--out', out, *COMMON)
    assert result.returncode == 0, result.stderr
    written = sorted(os.listdir(out / 'input_images'))
    assert written == [f'{i:03}.png' for i in range(kept.numel())]
    from PIL import Image
    for position, index in enumerate(kept.tolist()):
        saved = np.asarray(Image.open(out / 'input_images' / f'{position:03}.png').convert('RGB'))
        original = ((world['images'][index].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        assert np.abs(saved.astype(int) - original.astype(int)).max() <= 1


@pytest.mark.parametrize('flags, message', [
    (('--fraction_retained', 0), 'fraction_retained must be in (0, 1]'),
    (('--fraction_retained', 1.5), 'fraction_retained must be in (0, 1]'),
    (('--fraction_retained', 0.5), '--fraction_retained needs --flow_scores'),
])
def test_fraction_retained_is_checked(world, tmp_path, flags, message):
    result = run_module('applications.propagate_to_images', '--ckpt', world['ckpt'], '--real_data_path',
                        world['data'], '--out', tmp_path / 'v', *flags, *COMMON)
    assert result.returncode == 2 and message in result.stderr
    assert not os.path.exists(tmp_path / 'v')


def test_flow_scores_of_another_dataset_are_refused(world, tmp_path):
    scores_path = save_flow_scores(torch.zeros(NUM_IMAGES + 3), str(tmp_path / 'scores.pt'))
    for module, extra in (('applications.propagate_to_images', ('--out', tmp_path / 'v')),
                          ('applications.congeal_dataset', ('--out', tmp_path / 'c')),
                          ('applications.vis_correspondence', ('--out', tmp_path / 'm', '--dset_indices', 0, 1))):
        result = run_module(module, '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                            '--flow_scores', scores_path, '--fraction_retained', 0.5, *extra, *COMMON)
        line = error_line(result)
        assert line.startswith('error:') and f'hold {NUM_IMAGES + 3} scores but the dataset has {NUM_IMAGES}' in line
    assert not any(os.path.exists(tmp_path / name) for name in 'vcm')


def test_congeal_dataset_end_to_end(world, tmp_path):
    scores, mirrored = expected_scores(world['images'])
    scores_path = save_flow_scores(scores, str(tmp_path / 'scores.pt'))
    kept = high_score_indices(scores, 0.7)
    out = tmp_path / 'aligned'
    result = run_module('applications.congeal_dataset', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--out', out, '--output_resolution', 16, '--min_effective_resolution', 12,
                        '--flow_scores', scores_path, '--fraction_retained', 0.7, *COMMON)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ['data.mdb', 'dataset_indices.pt', 'keypoints.pt', 'lock.mdb',
                                       'pck_meta.json', 'permutation.pt']
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.partial')]
    indices = torch.load(out / 'dataset_indices.pt', weights_only=True)
    assert indices.tolist() == kept.tolist()
    aligned = MultiResolutionDataset(str(out), 16)
    assert len(aligned) == kept.numel()
    for position, index in enumerate(indices.tolist()):
        image = world['images'][index]
        if mirrored[index]:
            image = image.flip(2)
        # A centred zoom of 1/2 at 16 x 16 lands exactly on the central 16 x 16 source pixels.
        torch.testing.assert_close(aligned[position], image[:, 8:24, 8:24], atol=2 / 255, rtol=0)

    # The true keypoints come along: mirrored where the image was, then moved by the zoom
    # (output pixel j is source pixel j + 8).
    from datasets.keypoint_pairs import PCKDataset
    from models.spatial_transformers.base import mirror_points
    truth = PCKDataset(str(world['data']), SIZE)
    moved = mirror_points(truth.keypoints[indices], mirrored[indices], SIZE, truth.permutation)
    congealed = torch.load(out / 'keypoints.pt', weights_only=True)
    torch.testing.assert_close(congealed[..., :2], moved[..., :2] - 8, atol=1e-4, rtol=0)
    inside = ((moved[..., :2] - 8 >= -0.5) & (moved[..., :2] - 8 <= 15.5)).all(-1)
    assert torch.equal(congealed[..., 2] > 0, inside & (moved[..., 2] > 0))
    assert torch.equal(PCKDataset(str(out), 16).keypoints, congealed)

    # An output folder holding a dataset is refused, and left as it was.
    before = (out / 'data.mdb').stat().st_mtime_ns
    result = run_module('applications.congeal_dataset', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--out', out, '--output_resolution', 16, *COMMON)
    assert 'already holds a dataset' in error_line(result)
    assert (out / 'data.mdb').stat().st_mtime_ns == before


def test_congeal_dataset_leaves_nothing_when_every_image_is_too_small(world, tmp_path):
    out = tmp_path / 'aligned'
    # The crop spans 16 of the 32 pixels: a minimum of 20 leaves out every image.
    result = run_module('applications.congeal_dataset', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--out', out, '--output_resolution', 16, '--min_effective_resolution', 20, *COMMON)
    line = error_line(result)
    assert line.startswith('error:') and f'{NUM_IMAGES} below --min_effective_resolution' in line
    assert os.listdir(tmp_path) == []


def test_congeal_group_flags_warps_reading_beyond_the_image():
    from applications.congeal_dataset import congeal_group
    opt = argparse.Namespace(output_resolution=16, flow_size=16, min_effective_resolution=0, padding_mode='border',
                             iters=1, num_heads=1, cluster=None, no_flip_inference=True, transform=['similarity', 'flow'])
    images = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    _, keep, oob, small = congeal_group(make_stn(zoom=0.5, shift=0.0), None, opt, images)
    assert keep.all() and not oob.any() and not small.any()
    # Shifted by 0.75 of the half-width, a zoom of 1/2 reads a quarter of its output beyond the image.
    _, keep, oob, small = congeal_group(make_stn(zoom=0.5, shift=0.75), None, opt, images)
    assert not keep.any() and oob.all()
    # A landscape image padded to a square: the padding counts as beyond the image.
    wide = torch.rand(2, 3, 16, SIZE) * 2 - 1
    _, keep, oob, _ = congeal_group(make_stn(zoom=1.0), None, opt, wide)
    assert oob.all()
    opt.min_effective_resolution = 17
    _, keep, oob, small = congeal_group(make_stn(zoom=0.5), None, opt, images)
    assert small.all() and not keep.any()
