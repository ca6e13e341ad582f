"""PCKDataset: fixed and random pairs, keypoint rescaling, thresholds."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.lmdb_dataset import write_lmdb_dataset
from datasets.keypoint_pairs import PCKDataset, rescale_keypoints, write_pck_files
from utils.errors import UserError

NUM_IMAGES, NUM_POINTS = 7, 4


def _make_dataset(path, pairs=None, thresholds=False, sizes=(16, 32)):
    rng = np.random.default_rng(0)
    write_lmdb_dataset(str(path), {s: [rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
                                       for _ in range(NUM_IMAGES)] for s in sizes})
    keypoints = torch.zeros(NUM_IMAGES, NUM_POINTS, 3)
    keypoints[..., 0] = torch.arange(NUM_IMAGES).view(-1, 1) + torch.arange(NUM_POINTS) * 0.25
    keypoints[..., 1] = 31.0
    keypoints[..., 2] = 1.0
    keypoints[0, 3, 2] = 0.0
    extra = {}
    if thresholds:
        extra = dict(thresholds=torch.arange(NUM_IMAGES, dtype=torch.float32) + 100,
                     inverse_coordinates=torch.tensor([[0.0, 4.0, 0.5]]).repeat(NUM_IMAGES, 1))
    write_pck_files(str(path), keypoints, pairs, torch.tensor([1, 0, 2, 3]), keypoint_size=max(sizes), **extra)
    return keypoints


def test_fixed_pairs_and_item_contents(tmp_path):
    pairs = torch.tensor([[0, 1], [2, 6], [5, 3]])
    keypoints = _make_dataset(tmp_path, pairs=pairs)
    dataset = PCKDataset(str(tmp_path), 32)
    assert dataset.fixed_pairs and len(dataset) == 3
    assert torch.equal(dataset.pairs, pairs)
    assert torch.equal(dataset.permutation, torch.tensor([1, 0, 2, 3]))
    item = dataset[1]
    assert item['imgsA'].shape == (3, 32, 32) and item['imgsB'].shape == (3, 32, 32)
    assert (item['indexA'], item['indexB'], item['index']) == (2, 6, 1)
    assert torch.allclose(item['kpsA'], keypoints[2, :, :2])  # stored size: unchanged
    assert item['kpsB'].shape == (NUM_POINTS, 2) and item['visA'].dtype == torch.bool
    assert dataset[0]['visA'].tolist() == [True, True, True, False]
    assert 'threshA' not in item
    dataset.randomize_pairs(123)  # fixed pairs never change
    assert torch.equal(dataset.pairs, pairs)


def test_keypoints_rescaled_to_requested_size(tmp_path):
    keypoints = _make_dataset(tmp_path, pairs=torch.tensor([[0, 1]]))
    item = PCKDataset(str(tmp_path), 16)[0]
    expected = (keypoints[0, :, :2] + 0.5) * 0.5 - 0.5
    assert torch.allclose(item['kpsA'], expected)
    assert item['kpsA'][0, 1].item() == pytest.approx(15.25)  # bottom pixel centre 31 -> 15.25
    assert torch.allclose(rescale_keypoints(expected, 16, 32), keypoints[0, :, :2])


def test_random_pairs_are_seeded_and_valid(tmp_path):
    _make_dataset(tmp_path)  # no pairs.pt
    a, b = PCKDataset(str(tmp_path), 16, seed=3), PCKDataset(str(tmp_path), 16, seed=3)
    assert not a.fixed_pairs
    assert len(a) == NUM_IMAGES // 2
    assert torch.equal(a.pairs, b.pairs)
    assert (a.pairs[:, 0] != a.pairs[:, 1]).all()
    assert len(set(a.pairs.flatten().tolist())) == 2 * len(a)  # one perfect matching
    c = PCKDataset(str(tmp_path), 16, seed=4)
    assert not torch.equal(a.pairs, c.pairs)
    before = a.pairs.clone()
    a.randomize_pairs(99)
    assert not torch.equal(before, a.pairs)


def test_num_pck_pairs_overrides_fixed_pairs(tmp_path):
    _make_dataset(tmp_path, pairs=torch.tensor([[0, 1]]))
    dataset = PCKDataset(str(tmp_path), 16, num_pck_pairs=10, seed=0)
    assert not dataset.fixed_pairs and len(dataset) == 10
    assert (dataset.pairs[:, 0] != dataset.pairs[:, 1]).all()
    assert dataset.pairs.max() < NUM_IMAGES


def test_thresholds_and_scales(tmp_path):
    _make_dataset(tmp_path, pairs=torch.tensor([[4, 2]]), thresholds=True)
    item = PCKDataset(str(tmp_path), 16)[0]
    assert item['threshA'].item() == 104 and item['threshB'].item() == 102
    assert item['scaleA'].item() == pytest.approx(0.25)  # 0.5 at size 32 -> 0.25 at 16


def test_loader_collates_and_redrawn_pairs_reach_the_batches(tmp_path):
    _make_dataset(tmp_path, thresholds=True)
    dataset = PCKDataset(str(tmp_path), 16, seed=0)
    loader = DataLoader(dataset, batch_size=3)
    first = next(iter(loader))
    assert first['imgsA'].shape == (3, 3, 16, 16) and first['kpsA'].shape == (3, NUM_POINTS, 2)
    assert first['visB'].shape == (3, NUM_POINTS) and first['scaleA'].shape == (3,)
    first_pairs = torch.stack([first['indexA'], first['indexB']], 1)
    assert torch.equal(first_pairs, dataset.pairs)
    dataset.randomize_pairs(1)
    second = next(iter(loader))
    second_pairs = torch.stack([second['indexA'], second['indexB']], 1)
    assert second['index'].tolist() == [0, 1, 2]
    assert torch.equal(second_pairs, dataset.pairs) and not torch.equal(second_pairs, first_pairs)


def test_missing_or_broken_files(tmp_path):
    rng = np.random.default_rng(0)
    write_lmdb_dataset(str(tmp_path), {8: [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)] * 3})
    with pytest.raises(UserError, match='keypoints.pt'):
        PCKDataset(str(tmp_path), 8)
    torch.save(torch.zeros(5, 2, 3), str(tmp_path / 'keypoints.pt'))  # wrong image count
    with pytest.raises(UserError, match='shape'):
        PCKDataset(str(tmp_path), 8)
    with pytest.raises(ValueError):
        write_pck_files(str(tmp_path), torch.zeros(3, 2, 3), None, torch.tensor([0, 0]))
