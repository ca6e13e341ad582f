"""The Python API: the original release's README snippet, verbatim, and ``applications.api.Congealer``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.lmdb_dataset import write_lmdb_dataset
from tests.conftest import subprocess_env
from tests.released_layout import RELEASED_SIZES, write_released_checkpoint
from tests.test_applications import REPO, SHIFT_PIXELS, SIZE, run_module, world  # noqa: F401 (fixture)
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures('one_thread')

# The original README's snippet, as printed there, with 'cuda' replaced by 'cpu'.
ORIGINAL_SNIPPET = """\
from models import get_stn
from utils.download import download_model, PRETRAINED_TEST_HYPERPARAMS
from utils.vis_tools.helpers import load_pil, save_image

model_class = 'cat'  # choose the class you want to use
resolution = 512  # resolution the input image will be resized to (can be any power of 2)
image_path = 'my_image.jpeg'  # path to image you want to align

input_img = load_pil(image_path, resolution)  # load, resize to (resolution, resolution) and normalize to [-1, 1]
ckpt = download_model(model_class)  # download model weights
stn = get_stn(['similarity', 'flow'], flow_size=128, supersize=resolution).to('cpu')  # instantiate STN
stn.load_state_dict(ckpt['t_ema'])  # load weights
test_kwargs = PRETRAINED_TEST_HYPERPARAMS[model_class]  # load test-time hyperparameters
aligned_img = stn.forward_with_flip(input_img, output_resolution=resolution, **test_kwargs)  # forward pass through the STN
save_image(aligned_img, 'output.png', normalize=True, range=(-1, 1))  # save to disk
"""


def smooth_photo(size=300, seed=0):
    """uint8 (size, size, 3): a blurry random picture (a JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


@pytest.fixture(scope='module')
def released_folder(tmp_path_factory):
    """A working folder as the original's users have it: pretrained/cat.pt and an image."""
    root = tmp_path_factory.mktemp('original_user')
    os.makedirs(root / 'pretrained')
    write_released_checkpoint(root / 'pretrained' / 'cat.pt')
    Image.fromarray(smooth_photo()).save(root / 'my_image.jpeg', quality=95)
    return root


def run_snippet(folder, resolution):
    code = ORIGINAL_SNIPPET.replace('resolution = 512', f'resolution = {resolution}')
    assert code.count(f'resolution = {resolution}') == 1
    env = subprocess_env({'PYTHONPATH': REPO})
    return subprocess.run([sys.executable, '-c', code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize('resolution', RELEASED_SIZES)
def test_the_original_snippet_runs_verbatim(released_folder, resolution):
    out = released_folder / 'output.png'
    if out.exists():
        out.unlink()
    result = run_snippet(released_folder, resolution)
    assert result.returncode == 0, result.stderr
    aligned = np.asarray(Image.open(out))
    assert aligned.shape == (resolution, resolution, 3) and aligned.std() > 1
    if resolution != 256:
        return
    # The same image through propagate_to_images gives the same aligned image.
    from utils.vis_tools.helpers import load_pil
    pixels = load_pil(str(released_folder / 'my_image.jpeg'), 256, device='cpu')
    pixels = ((pixels[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    write_lmdb_dataset(str(released_folder / 'data'), {256: pixels[None]})
    env = subprocess_env({'PYTHONPATH': REPO})
    command = [sys.executable, '-m', 'applications.propagate_to_images', '--ckpt', 'cat', '--real_data_path',
               'data', '--real_size', '256', '--save_individual_images', '--num_workers', '0', '--device', 'cpu',
               '--precision', 'fp32', '--out', 'visuals']
    result = subprocess.run(command, cwd=released_folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    ours = np.asarray(Image.open(released_folder / 'visuals' / 'congealed_images' / '000.png'))
    difference = np.abs(ours.astype(int) - aligned.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001


def test_the_test_settings_of_a_clustering_model_pass_as_keyword_arguments():
    from models import get_stn
    from utils.download import PRETRAINED_TEST_HYPERPARAMS
    settings = PRETRAINED_TEST_HYPERPARAMS['car']
    assert settings == {'padding_mode': 'reflection', 'iters': 3, 'num_heads': 4}
    assert PRETRAINED_TEST_HYPERPARAMS['cat'] == {'padding_mode': 'border', 'iters': 3}
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    four = get_stn(['similarity', 'flow'], flow_size=16, supersize=32, num_heads=4, max_channels=32)
    with torch.no_grad():
        assert four.forward_with_flip(images, output_resolution=32, **settings).shape == (8, 3, 32, 32)
    one = get_stn(['similarity', 'flow'], flow_size=16, supersize=32, max_channels=32)
    with pytest.raises(UserError, match='with 4 heads, and this one has 1'):
        one.forward_with_flip(images, **settings)


def test_download_model_reads_a_released_name(released_folder, monkeypatch):
    from utils.download import download_model
    monkeypatch.chdir(released_folder)  # the original's layout: ./pretrained/<name>.pt
    ckpt = download_model('cat')
    assert set(ckpt) == {'t_ema', 'args'} and ckpt['args'].flow_size == 128


def test_save_image_takes_the_original_and_the_current_argument_names(tmp_path):
    from utils.vis_tools.helpers import save_image
    images = torch.linspace(-1, 1, 3 * 4 * 4).view(1, 3, 4, 4)
    save_image(images, tmp_path / 'a.png', normalize=True, range=(-1, 1))
    save_image(images, tmp_path / 'b.png', normalize=True, value_range=(-1, 1))
    a, b = np.asarray(Image.open(tmp_path / 'a.png')), np.asarray(Image.open(tmp_path / 'b.png'))
    assert a.shape == (4, 4, 3) and (a == b).all()
    assert a[0, 0, 0] == 0 and a[-1, -1, -1] == 255
    assert sorted(os.listdir(tmp_path)) == ['a.png', 'b.png']


# ----------------------------------------------------------------------------- Congealer

@pytest.fixture(scope='module')
def congealer(world):
    from applications.api import Congealer
    return Congealer(world['ckpt'], real_size=SIZE, device='cpu', precision='fp32', opacity=1.0, sigma=0.5)


def world_images(world, indices):
    return torch.from_numpy(world['images'][indices]).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_congealer_aligns_as_propagate_to_images(world, congealer, tmp_path):
    images = world_images(world, [1, 3])
    aligned = congealer.align(images)
    assert aligned.shape == (2, 3, SIZE, SIZE)
    result = run_module('applications.propagate_to_images', '--ckpt', world['ckpt'], '--real_data_path',
                        world['data'], '--real_size', SIZE, '--dset_indices', 1, 3, '--save_individual_images',
                        '--num_workers', 0, '--device', 'cpu', '--precision', 'fp32', '--out', tmp_path)
    assert result.returncode == 0, result.stderr
    for position in range(2):
        saved = np.asarray(Image.open(tmp_path / 'congealed_images' / f'{position:03}.png')).astype(int)
        ours = ((aligned[position].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).numpy().astype(int)
        assert np.abs(saved - ours).max() <= 1


def test_congealer_propagates_labels_and_transfers_points(world, congealer):
    images = world_images(world, [0, 5])
    edited = congealer.propagate(images, world['label'], objects=True)
    red = (edited[:, 0] > 0.9) & (edited[:, 1] < -0.9)
    # The label's square (template x 10..13, y 12..15) lands SHIFT_PIXELS to the right.
    assert red[:, 12:16, 10 + SHIFT_PIXELS:14 + SHIFT_PIXELS].all()
    # Every image is the template shifted alike, so points keep their place from one image to
    # another, up to the template grid's quantisation (points enter the template at the nearest
    # of its flow_size pixels: 2 image pixels here).
    points = torch.tensor([[[8.0, 8.0], [20.0, 12.0], [16.0, 24.0]]])
    landed = congealer.transfer_points(images[:1], images[1:], points)
    torch.testing.assert_close(landed, points, atol=1.0, rtol=0)
    flow = congealer.dense_flow(images[:1], images[1:])
    assert flow.shape == (1, SIZE, SIZE, 2)
    inner = flow[0, 4:-4, 4:-4]  # away from the border the template does not cover
    ys, xs = torch.meshgrid(torch.arange(4, SIZE - 4), torch.arange(4, SIZE - 4), indexing='ij')
    torch.testing.assert_close(inner, torch.stack([xs, ys], -1).float(), atol=1.0, rtol=0)


# ----------------------------------------------------------------------------- applications.correspond

def test_correspond_writes_the_flow_a_picture_and_transferred_points(world, tmp_path):
    for name, index in (('a.png', 0), ('b.png', 5)):
        Image.fromarray(world['images'][index]).save(tmp_path / name)
    (tmp_path / 'points.json').write_text(json.dumps([[8, 8], [20, 12]]))
    out = tmp_path / 'corr'
    result = run_module('applications.correspond', '--ckpt', world['ckpt'], '--source', tmp_path / 'a.png',
                        '--target', tmp_path / 'b.png', '--points', tmp_path / 'points.json', '--real_size', SIZE,
                        '--device', 'cpu', '--precision', 'fp32', '--out', out)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ['flow.npy', 'flow.png', 'transferred_points.json']
    flow = np.load(out / 'flow.npy')
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
    ys, xs = np.mgrid[4:SIZE - 4, 4:SIZE - 4]
    assert np.abs(flow[4:-4, 4:-4] - np.stack([xs, ys], -1)).max() <= 1.0  # the template grid: 2 pixels
    record = json.loads((out / 'transferred_points.json').read_text())
    assert record['mirrored'] == 'neither'
    np.testing.assert_allclose(record['target'], [[8, 8], [20, 12]], atol=1.0)
    assert np.asarray(Image.open(out / 'flow.png')).shape[1] > 4 * SIZE


def test_correspond_refuses_a_non_square_image_before_any_output(world, tmp_path):
    Image.fromarray(world['images'][0][:, :20]).save(tmp_path / 'narrow.png')
    Image.fromarray(world['images'][1]).save(tmp_path / 'b.png')
    result = run_module('applications.correspond', '--ckpt', world['ckpt'], '--source', tmp_path / 'narrow.png',
                        '--target', tmp_path / 'b.png', '--real_size', SIZE, '--device', 'cpu',
                        '--out', tmp_path / 'corr')
    from tests.test_applications import single_error_line
    assert '20 x 32 pixels' in single_error_line(result)
    assert not (tmp_path / 'corr').exists()


def test_correspondence_equals_pck_transfer_on_the_same_pairs():
    # A transformer with random warps, so mirrors get chosen; no keypoint permutation.
    from applications.common.correspondence import transfer_points
    from metrics.pck_transfer import evaluate_batch
    from models import get_stn
    import argparse
    torch.manual_seed(0)
    t = get_stn(['similarity', 'flow'], flow_size=16, supersize=32, max_channels=32).eval()
    with torch.no_grad():
        for name, param in t.named_parameters():
            if 'warp_head' in name:
                param.normal_(0, 0.05)
    n, p = 6, 5
    images_a, images_b = torch.rand(n, 3, 32, 32) * 2 - 1, torch.rand(n, 3, 32, 32) * 2 - 1
    points_a = torch.rand(n, p, 2) * 31
    opt = argparse.Namespace(padding_mode='border', iters=1, no_flip_inference=False, num_heads=1)
    landed, pick = transfer_points(t, opt, images_a, images_b, points_a)
    assert (pick > 0).any()  # some pairs were mirrored
    # Take our transfers as the truth: PCK-Transfer's estimates must all be exactly right.
    batch = {'imgsA': images_a, 'imgsB': images_b, 'kpsA': points_a, 'kpsB': landed}
    with torch.no_grad():
        counts = evaluate_batch(t, batch, torch.tensor([1e-4]), padding_mode='border', iters=1)
    assert torch.equal(counts['correct'][:, 0], counts['counted'])
