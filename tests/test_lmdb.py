"""LMDB datasets, pad modes, the image-folder dataset, samplers and dataset modes."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datasets.image_folder import ImageFolderDataset
from datasets.lmdb_dataset import LMDBWriter, MultiResolutionDataset, write_lmdb_dataset
from datasets.modes import DATASET_MODES
from datasets.samplers import data_sampler
from datasets.transforms import PAD_MODES, crop_box_edge_padded, make_square, pad_geometry
from utils.errors import UserError
from utils.image_io import encode_image


def _random_images(count, size, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def _to_uint8(tensor):
    return ((tensor + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_round_trip_at_several_sizes(tmp_path):
    images = {8: _random_images(5, 8, 0), 16: _random_images(5, 16, 1), 32: _random_images(5, 32, 2)}
    assert write_lmdb_dataset(str(tmp_path), images) == 5
    for size, originals in images.items():
        dataset = MultiResolutionDataset(str(tmp_path), size)
        assert len(dataset) == 5
        for index in (0, 4):
            item = dataset[index]
            assert item.shape == (3, size, size) and item.dtype == torch.float32
            assert item.min() >= -1 and item.max() <= 1
            assert np.array_equal(_to_uint8(item), originals[index])  # png is lossless


def test_jpeg_round_trip_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
    write_lmdb_dataset(str(tmp_path), {16: [smooth, smooth]}, image_format='jpeg')
    item = MultiResolutionDataset(str(tmp_path), 16)[1]
    assert np.abs(_to_uint8(item).astype(int) - smooth.astype(int)).max() <= 8


def test_transform_is_applied_to_the_tensor(tmp_path):
    images = _random_images(2, 8, 3)
    write_lmdb_dataset(str(tmp_path), {8: images})
    flipped = MultiResolutionDataset(str(tmp_path), 8, transform=lambda x: x.flip(-1))[0]
    assert np.array_equal(_to_uint8(flipped), images[0][:, ::-1])


def test_bad_paths_and_sizes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        MultiResolutionDataset(str(tmp_path / 'absent'), 8)
    with pytest.raises(UserError, match='not an LMDB'):
        MultiResolutionDataset(str(tmp_path), 8)
    write_lmdb_dataset(str(tmp_path / 'd'), {8: _random_images(2, 8, 0), 32: _random_images(2, 32, 0)})
    with pytest.raises(UserError) as info:
        MultiResolutionDataset(str(tmp_path / 'd'), 16)
    assert 'sizes present: 8, 32' in str(info.value)


def test_interrupted_write_is_refused(tmp_path):
    with LMDBWriter(str(tmp_path)) as writer:
        writer.put(8, 0, encode_image(_random_images(1, 8, 0)[0]))
        # leaves without finish(): no length key
    with pytest.raises(UserError, match='incomplete'):
        MultiResolutionDataset(str(tmp_path), 8)
    # Rewriting a complete dataset marks it incomplete until the new length is written.
    write_lmdb_dataset(str(tmp_path), {8: _random_images(3, 8, 0)})
    assert len(MultiResolutionDataset(str(tmp_path), 8)) == 3
    writer = LMDBWriter(str(tmp_path))
    writer.close()
    with pytest.raises(UserError, match='incomplete'):
        MultiResolutionDataset(str(tmp_path), 8)


def test_loader_with_worker_processes(tmp_path):
    images = _random_images(6, 8, 4)
    write_lmdb_dataset(str(tmp_path), {8: images})
    dataset = MultiResolutionDataset(str(tmp_path), 8)
    dataset[0]  # the parent has the environment open before the workers fork
    same_folder = MultiResolutionDataset(str(tmp_path), 8)
    batches = list(DataLoader(same_folder, batch_size=3, num_workers=2))
    stacked = torch.cat(batches)
    assert stacked.shape == (6, 3, 8, 8)
    assert np.array_equal(_to_uint8(stacked[5]), images[5])


# ----------------------------------------------------------------------------- pad modes

def _wide_image(height=10, width=20):
    """Left half red, right half blue; top row white."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2, 0] = 255
    image[:, width // 2:, 2] = 255
    image[0] = 255
    return image


@pytest.mark.parametrize('mode', PAD_MODES)
def test_pad_mode_output_sizes(mode):
    wide, tall = _wide_image(10, 20), _wide_image(20, 10)
    expected = {'center': (16, 16), 'border': (16, 16), 'zero': (16, 16),
                'resize_small_side': ((16, 32), (32, 16)), 'none': ((10, 20), (20, 10))}[mode]
    shapes = make_square(wide, 16, mode).shape[:2], make_square(tall, 16, mode).shape[:2]
    if mode in ('resize_small_side', 'none'):
        assert shapes == expected
    else:
        assert shapes == (expected, expected)


def test_zero_pad_places_image_between_black_bars():
    out = make_square(_wide_image(10, 20), 20, 'zero')  # no resize: longer side is already 20
    assert (out[:5] == 0).all() and (out[15:] == 0).all()
    assert np.array_equal(out[5:15], _wide_image(10, 20))
    assert pad_geometry(20, 10, 20) == (0, 5, 1.0)


def test_border_pad_repeats_edge_rows():
    image = _wide_image(10, 20)
    out = make_square(image, 20, 'border')
    assert np.array_equal(out[5:15], image)
    assert (out[:5] == image[0]).all()  # top bars repeat the white top row
    assert (out[15:] == image[-1]).all()


def test_center_crop_keeps_the_middle():
    image = np.zeros((10, 30, 3), dtype=np.uint8)
    image[:, 10:20] = 200  # the central square
    out = make_square(image, 10, 'center')
    assert (out == 200).all()


def test_crop_box_edge_padded_repeats_edges():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    crop = crop_box_edge_padded(image, (-1, 2, 2, 5))
    assert crop.shape == (4, 4, 3)
    assert np.array_equal(crop[0, 1:], image[2, 0:3])
    assert np.array_equal(crop[:, 0], crop[:, 1])  # left column outside: repeated
    assert np.array_equal(crop[3], crop[2])  # bottom row outside: repeated


# ----------------------------------------------------------------------------- image folder

def test_image_folder_dataset(tmp_path):
    for i, (h, w) in enumerate([(10, 20), (30, 15), (12, 12)]):
        Image.fromarray(_wide_image(h, w)).save(tmp_path / f'{i}.png')
    dataset = ImageFolderDataset(str(tmp_path), 16, pad='border')
    assert len(dataset) == 3
    assert all(dataset[i].shape == (3, 16, 16) for i in range(3))
    assert dataset[0].min() >= -1 and dataset[0].max() <= 1
    assert len(ImageFolderDataset(str(tmp_path), 8, pattern='1.png')) == 1
    with pytest.raises(UserError, match='no images'):
        ImageFolderDataset(str(tmp_path), 8, pattern='*.jpg')
    with pytest.raises(UserError, match='does not exist'):
        ImageFolderDataset(str(tmp_path / 'absent'), 8)


# ----------------------------------------------------------------------------- samplers

def test_data_sampler_kinds():
    dataset = list(range(10))
    assert isinstance(data_sampler(dataset, shuffle=True, distributed=False), torch.utils.data.RandomSampler)
    assert list(data_sampler(dataset, shuffle=False, distributed=False)) == list(range(10))


# ----------------------------------------------------------------------------- dataset modes

def test_dataset_modes_build_images(tmp_path):
    write_lmdb_dataset(str(tmp_path / 'lmdb'), {8: _random_images(3, 8, 0)})
    lmdb_mode = DATASET_MODES.get('lmdb')
    parser = lmdb_mode.modify_commandline_options(argparse.ArgumentParser(), True)
    opt = parser.parse_args([])
    opt.real_data_path, opt.real_size, opt.seed = str(tmp_path / 'lmdb'), 8, 0
    assert len(lmdb_mode.build_images(opt, 'train')) == 3
    assert lmdb_mode.build_pck(opt) is None  # no keypoints.pt
    opt.real_data_path = None
    assert lmdb_mode.build_images(opt, 'train') is None

    (tmp_path / 'folder').mkdir()
    Image.fromarray(_wide_image()).save(tmp_path / 'folder' / 'a.jpg')
    folder_mode = DATASET_MODES.get('image_folder')
    opt = folder_mode.modify_commandline_options(argparse.ArgumentParser(), False).parse_args(['--image_pad', 'zero'])
    opt.real_data_path, opt.real_size = str(tmp_path / 'folder'), 8
    images = folder_mode.build_images(opt, 'test')
    assert len(images) == 1 and images[0].shape == (3, 8, 8)
    assert folder_mode.build_pck(opt) is None
