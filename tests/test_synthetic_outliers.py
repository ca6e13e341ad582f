"""Known outliers of the synthetic world: which images, what they look like, how they are recorded."""
import os
import subprocess
import sys

import numpy as np
import torch

from datasets.lmdb_dataset import MultiResolutionDataset
from synthetic_world.outliers import OUTLIER_KINDS, outlier_labels, render_outliers
from synthetic_world import render_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_outlier_labels():
    labels = outlier_labels(40, 0.25, seed=3)
    assert labels.shape == (40,) and int((labels > 0).sum()) == 10
    assert torch.equal(labels, outlier_labels(40, 0.25, seed=3))
    assert not torch.equal(labels, outlier_labels(40, 0.25, seed=4))
    # Kinds go round in index order.
    assert labels[labels > 0].tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert int((outlier_labels(40, 0.0, seed=3) > 0).sum()) == 0


def test_outliers_differ_from_the_ordinary_image_as_their_kind_says():
    indices = torch.tensor([0, 1, 2])
    labels = torch.tensor([1, 2, 3])  # cut, tiny, scrambled
    images, keypoints = render_outliers(indices, labels, 32, seed=0)
    ordinary, ordinary_points = render_dataset(3, 32, 0)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    # Cut: most of the face's keypoints leave the frame.
    assert keypoints[0, :, 2].sum() < ordinary_points[0, :, 2].sum()
    # Tiny: the keypoints huddle together.
    assert keypoints[1, :, :2].std(0).norm() < ordinary_points[1, :, :2].std(0).norm() / 4
    # Scrambled: the same pixels in other places, and no keypoint is anywhere.
    assert sorted(images[2].reshape(-1).tolist()) == sorted(ordinary[2].reshape(-1).tolist())
    assert not np.array_equal(images[2], ordinary[2]) and keypoints[2, :, 2].sum() == 0


def test_prepare_data_mixes_in_labelled_outliers(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    out = tmp_path / 'data'
    result = subprocess.run([sys.executable, 'prepare_data.py', '--synthetic', '--size', '32', '--max_images', '12',
                             '--outlier_fraction', '0.5', '--seed', '2', '--out', str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    labels = torch.load(out / 'outliers.pt', weights_only=True)
    assert torch.equal(labels, outlier_labels(12, 0.5, seed=2))
    dataset = MultiResolutionDataset(str(out), 32)
    ordinary, _ = render_dataset(12, 32, 2)
    outliers, _ = render_outliers(torch.nonzero(labels).view(-1), labels[labels > 0], 32, seed=2)
    stored = np.stack([dataset.read_array(i) for i in range(12)])
    assert np.array_equal(stored[labels.numpy() == 0], ordinary[labels.numpy() == 0])
    assert np.array_equal(stored[labels.numpy() > 0], outliers)
    pairs = torch.load(out / 'pairs.pt', weights_only=True)
    assert pairs.numel() and (labels[pairs] == 0).all()
    assert len(OUTLIER_KINDS) == 3

    for flags, message in ((['--synthetic', '--outlier_fraction', '1.5'], 'must be in [0, 1)'),
                           (['--path', str(tmp_path), '--outlier_fraction', '0.2'], 'applies to --synthetic only')):
        result = subprocess.run([sys.executable, 'prepare_data.py', *flags, '--out', str(tmp_path / 'x')], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and message in result.stderr and 'Traceback' not in result.stderr
        assert not os.path.exists(tmp_path / 'x')
