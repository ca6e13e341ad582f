"""prepare_data.py end to end (as a subprocess) and its SPair / CUB / synthetic converters."""
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import prepare_data
from datasets import spair
from datasets.lmdb_dataset import MultiResolutionDataset
from datasets.keypoint_pairs import PCKDataset
from datasets.transforms import make_square
from tests.test_download import FileServer, closed_port_url
from utils.download import DownloadError
from utils.image_io import encode_image, tensor_to_uint8

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_prepare(*args):
    result = subprocess.run([sys.executable, 'prepare_data.py', *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    return result


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _image(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / 'images'
    shapes = [(20, 30), (30, 20), (24, 24), (18, 40), (33, 21)]
    originals = [_image(h, w, i) for i, (h, w) in enumerate(shapes)]
    for i, array in enumerate(originals):
        _save(str(folder / f'{i:02d}.png'), array)
    (folder / '02b.png').write_bytes(b'\x89PNG this file is corrupt')
    return folder, originals


def test_image_folder_to_lmdb_with_workers_and_a_corrupt_file(tmp_path, image_folder):
    folder, originals = image_folder
    out = tmp_path / 'out'
    result = run_prepare('--path', folder, '--out', out, '--size', '16,32', '--pad', 'border', '--n_worker', '2')
    assert result.returncode == 0, result.stderr
    assert 'skipped 1 of 6' in result.stderr and '02b.png' in result.stderr
    for size in (16, 32):
        dataset = MultiResolutionDataset(str(out), size)
        assert len(dataset) == 5
        # Stored in name order with the corrupt file left out, each border-padded exactly.
        for index in (0, 2, 3):
            assert np.array_equal(tensor_to_uint8(dataset[index]), make_square(originals[index], size, 'border'))

    # An existing LMDB as input (our own layout: its largest size is read).
    again = tmp_path / 'again'
    assert prepare_data.main(['--input_is_lmdb', '--path', str(out), '--out', str(again), '--size', '8',
                              '--pad', 'none', '--max_images', '3', '--n_worker', '0']) == 0
    dataset = MultiResolutionDataset(str(again), 8)
    assert len(dataset) == 3
    assert np.array_equal(tensor_to_uint8(dataset[1]), make_square(originals[1], 32, 'border'))


def test_missing_path_exits_1_without_traceback_or_output(tmp_path):
    out = tmp_path / 'out'
    result = run_prepare('--path', tmp_path / 'absent', '--out', out, '--n_worker', '0')
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith('error: ')
    assert 'absent' in result.stderr and 'Traceback' not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize('case', ['no_match', 'bad_sizes', 'no_out', 'two_inputs'])
def test_bad_input_is_a_one_line_error(tmp_path, image_folder, capsys, case):
    folder, _ = image_folder
    out = tmp_path / 'out'
    args = {
        'no_match': ['--path', folder, '--pattern', '*.jpg', '--out', out],
        'bad_sizes': ['--path', folder, '--out', out, '--size', '64,abc'],
        'no_out': ['--path', folder],
        'two_inputs': ['--synthetic', '--cub_acsm', '--out', out],
    }[case]
    with pytest.raises(SystemExit) as info:
        prepare_data.main([*map(str, args), '--n_worker', '0'])
    assert info.value.code == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith('error: ')
    assert not out.exists()


def test_existing_dataset_needs_overwrite_and_max_images(tmp_path, image_folder, capsys):
    folder, _ = image_folder
    out = tmp_path / 'out'
    common = ['--path', str(folder), '--out', str(out), '--size', '8', '--n_worker', '0']
    assert prepare_data.main(common) == 0
    with pytest.raises(SystemExit):
        prepare_data.main(common)
    assert '--overwrite' in capsys.readouterr().err
    assert len(MultiResolutionDataset(str(out), 8)) == 5  # untouched
    assert prepare_data.main([*common, '--overwrite', '--max_images', '2', '--pad', 'zero']) == 0
    assert len(MultiResolutionDataset(str(out), 8)) == 2


def test_failed_run_removes_what_it_wrote(tmp_path, monkeypatch):
    out = tmp_path / 'new'

    def broken(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare_data, 'write_images', broken)
    with pytest.raises(KeyboardInterrupt):
        with prepare_data.OutputFolder(str(out), overwrite=False) as folder:
            prepare_data.prepare_from_tasks(folder, [], [8], 'center', 'png', 0)
    assert not out.exists()


# ----------------------------------------------------------------------------- SPair-71K

def _fake_spair(root, category='cat', num_points=15):
    """A two-pair SPair-71k layout with non-square images."""
    sizes = {'a.jpg': (40, 20), 'b.jpg': (30, 60), 'c.jpg': (50, 50)}  # (W, H)
    for name, (w, h) in sizes.items():
        _save(os.path.join(root, 'JPEGImages', category, name), _image(h, w, len(name)))
    os.makedirs(os.path.join(root, 'ImageAnnotation', category))
    with open(os.path.join(root, 'ImageAnnotation', category, 'a.json'), 'w') as f:
        json.dump({'kps': {str(i): None for i in range(num_points)}}, f)
    pairs = [('a.jpg', 'b.jpg', list(range(0, 8))), ('c.jpg', 'a.jpg', list(range(8, num_points)))]
    os.makedirs(os.path.join(root, 'PairAnnotation', 'test'))
    for i, (src, trg, ids) in enumerate(pairs):
        annotation = {
            'category': category, 'mirror': 0, 'src_imname': src, 'trg_imname': trg,
            'src_imsize': [*sizes[src], 3], 'trg_imsize': [*sizes[trg], 3],
            'src_bndbox': [1, 2, 21, 12], 'trg_bndbox': [0, 0, 10, 30],
            'kps_ids': [str(k) for k in ids],
            'src_kps': [[k + 0.5, 2.0] for k in ids], 'trg_kps': [[3.0, k + 1.0] for k in ids],
        }
        with open(os.path.join(root, 'PairAnnotation', 'test', f'{i:06d}-{src[0]}-{trg[0]}:{category}.json'), 'w') as f:
            json.dump(annotation, f)
    # Another category's pair must be ignored.
    with open(os.path.join(root, 'PairAnnotation', 'test', '000009-x-y:dog.json'), 'w') as f:
        json.dump({}, f)
    return sizes


def test_spair_conversion(tmp_path):
    root = tmp_path / 'SPair-71k'
    _fake_spair(str(root))
    out = tmp_path / 'spair_cat'
    result = run_prepare('--spair_category', 'cat', '--path', root, '--out', out, '--size', '32', '--n_worker', '0')
    assert result.returncode == 0, result.stderr
    dataset = PCKDataset(str(out), 32)
    assert dataset.fixed_pairs and dataset.pairs.tolist() == [[0, 1], [2, 3]]
    assert dataset.permutation.tolist() == spair.SPAIR_PERMUTATIONS['cat']
    # Image 0 is a.jpg (40 x 20): scale 32/40 = 0.8, padded by (32 - 16) / 2 = 8 rows on top.
    item = dataset[0]
    assert item['visA'][:8].all() and not item['visA'][8:].any()
    assert torch.allclose(item['kpsA'][3], torch.tensor([3.5 * 0.8, 2.0 * 0.8 + 8]))
    assert item['threshA'].item() == 20 and item['threshB'].item() == 30  # longer bbox sides
    assert item['scaleA'].item() == pytest.approx(0.8)
    # b.jpg (30 x 60): scale 32/60, padded by (32 - 16) // 2 = 8 columns.
    assert torch.allclose(item['kpsB'][2], torch.tensor([3.0 * 32 / 60 + 8, 3.0 * 32 / 60]))
    stored = MultiResolutionDataset(str(out), 32)
    original = np.asarray(Image.open(root / 'JPEGImages' / 'cat' / 'a.jpg').convert('RGB'))
    assert np.array_equal(tensor_to_uint8(stored[0]), make_square(original, 32, 'border'))


def test_spair_download_extract_and_offline_error(tmp_path, monkeypatch):
    source = tmp_path / 'src' / 'SPair-71k'
    _fake_spair(str(source))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
        tar.add(str(source), arcname='SPair-71k')
    data_dir = tmp_path / 'data'
    with FileServer({'/SPair-71k.tar.gz': buffer.getvalue()}) as server:
        monkeypatch.setattr(spair, 'SPAIR_URL', server.url('/SPair-71k.tar.gz'))
        root = spair.ensure_spair(str(data_dir), progress=False)
    assert root == str(data_dir / 'SPair-71k')
    assert (data_dir / 'SPair-71k' / 'JPEGImages' / 'cat' / 'a.jpg').is_file()
    assert len(spair.load_spair_split(root, 'cat', 'test', 16).files) == 4

    url = closed_port_url('/SPair-71k.tar.gz')
    monkeypatch.setattr(spair, 'SPAIR_URL', url)
    with pytest.raises(DownloadError) as info:
        spair.ensure_spair(str(tmp_path / 'offline'), progress=False)
    assert url in str(info.value) and str(tmp_path / 'offline' / 'SPair-71k.tar.gz') in str(info.value)


# ----------------------------------------------------------------------------- CUB

def _fake_cub(root, data_dir):
    """Three CUB images, their parts, and an ACSM split file listing two of them."""
    from scipy.io import savemat
    shapes = [(40, 60), (50, 30), (30, 30)]  # (H, W)
    lines = []
    for image_id, (h, w) in enumerate(shapes, start=1):
        _save(os.path.join(root, 'images', f'001.Bird/{image_id}.jpg'), _image(h, w, image_id))
        for part in range(1, 16):
            visible = int(part != 15)
            lines.append(f'{image_id} {part} {10.0 + part * visible} {12.0 * visible} {visible}')
    os.makedirs(os.path.join(root, 'parts'))
    with open(os.path.join(root, 'parts', 'part_locs.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    box_type = [('x1', 'O'), ('y1', 'O'), ('x2', 'O'), ('y2', 'O')]
    images = np.zeros((1, 2), dtype=[('rel_path', 'O'), ('id', 'O'), ('bbox', 'O')])
    for column, (image_id, box) in enumerate([(1, (6, 11, 45, 30)), (3, (1, 1, 30, 30))]):
        bbox = np.zeros((1, 1), dtype=box_type)
        for name, value in zip(('x1', 'y1', 'x2', 'y2'), box):
            bbox[0, 0][name] = np.array([[value]], dtype=np.float64)
        images[0, column] = (np.array([f'001.Bird/{image_id}.jpg']), np.array([[image_id]]), bbox)
    os.makedirs(data_dir, exist_ok=True)
    savemat(os.path.join(data_dir, 'val_cub_cleaned.mat'), {'images': images})


def test_cub_acsm_conversion(tmp_path):
    root, data_dir = tmp_path / 'CUB_200_2011', tmp_path / 'data'
    _fake_cub(str(root), str(data_dir))
    out = tmp_path / 'cub'
    result = run_prepare('--cub_acsm', '--path', root, '--data_dir', data_dir, '--out', out, '--size', '32',
                         '--n_worker', '0')
    assert result.returncode == 0, result.stderr
    dataset = PCKDataset(str(out), 32, num_pck_pairs=4, seed=0)
    assert len(dataset) == 4 and len(dataset.images) == 2
    assert dataset.permutation.tolist() == [0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14]
    # Image 1: box (5, 10, 44, 29) zero-based, grown by 5% -> (3, 9, 46, 30) (44 x 22), squared to
    # 44 x 44 from (3, -2); part 1 at one-based (11, 12) -> ((11 - 4) * 32/44, (12 + 1) * 32/44).
    assert torch.allclose(dataset.keypoints[0, 0, :2], torch.tensor([7 * 32 / 44, 13 * 32 / 44]))
    assert dataset.keypoints[0, 14, 2] == 0
    original = np.asarray(Image.open(root / 'images' / '001.Bird' / '1.jpg').convert('RGB'))
    rows, cols = np.clip(np.arange(-2, 42), 0, 39), np.clip(np.arange(3, 47), 0, 59)
    expected = np.asarray(Image.fromarray(original[rows][:, cols]).resize((32, 32), Image.LANCZOS))
    assert np.array_equal(tensor_to_uint8(dataset.images[0]), expected)


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_dataset(tmp_path):
    from synthetic_world import MIRROR_PERMUTATION, render_dataset
    out = tmp_path / 'synthetic'
    result = run_prepare('--synthetic', '--seed', '2', '--out', out, '--size', '16,32', '--max_images', '5')
    assert result.returncode == 0, result.stderr
    dataset = PCKDataset(str(out), 16)
    assert dataset.fixed_pairs and dataset.pairs.tolist() == [[0, 1], [2, 3]]
    assert torch.equal(dataset.permutation, MIRROR_PERMUTATION)
    images, keypoints = render_dataset(5, 16, 2)
    assert np.array_equal(tensor_to_uint8(dataset.images[4]), images[4])
    assert torch.allclose(dataset.keypoints[..., :2], keypoints[..., :2], atol=1e-4)
    assert len(MultiResolutionDataset(str(out), 32)) == 5


# ----------------------------------------------------------------------------- LSUN

def test_lsun_category_download_and_generic_lmdb_input(tmp_path, monkeypatch):
    # A generic LMDB like LSUN's: arbitrary keys, encoded images (one corrupt) as values.
    source = tmp_path / 'src' / 'bird'
    source.mkdir(parents=True)
    env = lmdb.open(str(source), map_size=1 << 24)
    originals = [_image(20, 30, i) for i in range(3)]
    with env.begin(write=True) as txn:
        for i, array in enumerate(originals):
            txn.put(f'img{i:03d}'.encode(), encode_image(array, 'jpeg'))
        txn.put(b'img999', b'corrupt bytes')
    env.close()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as zipped:
        for name in os.listdir(source):
            zipped.write(source / name, f'bird/{name}')
    data_dir, out = tmp_path / 'data', tmp_path / 'out'
    with FileServer({'/bird.zip': buffer.getvalue()}) as server:
        monkeypatch.setattr(prepare_data, 'LSUN_URL', server.url('/{category}.zip'))
        assert prepare_data.main(['--lsun_category', 'bird', '--data_dir', str(data_dir), '--out', str(out),
                                  '--size', '16', '--n_worker', '0']) == 0
    assert (data_dir / 'bird' / 'data.mdb').is_file()
    dataset = MultiResolutionDataset(str(out), 16)
    assert len(dataset) == 3  # the corrupt value was skipped
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(originals[2], 'jpeg'))).convert('RGB'))
    assert np.array_equal(tensor_to_uint8(dataset[2]), make_square(decoded, 16, 'center'))
