"""The adjusted Rand index (metrics/cluster_agreement.py) on partitions with known values."""
import numpy as np
import pytest
import torch

from metrics.cluster_agreement import adjusted_rand_index


def test_identical_partitions_score_one_whatever_the_names():
    truth = [0, 0, 1, 1, 2, 2, 2]
    assert adjusted_rand_index(truth, truth) == 1.0
    assert adjusted_rand_index([5, 5, 3, 3, 9, 9, 9], truth) == pytest.approx(1.0)
    assert adjusted_rand_index(torch.tensor([1, 1, 0, 0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)


def test_a_hand_computed_value():
    # Contingency [[2, 1], [0, 3]]: pairs together 1 + 3 = 4; rows (3, 3) give 6, columns (2, 4) give 7;
    # expected 6 * 7 / 15 = 2.8; maximum 6.5; ARI = (4 - 2.8) / (6.5 - 2.8).
    labels = [0, 0, 0, 1, 1, 1]
    reference = [0, 0, 1, 1, 1, 1]
    assert adjusted_rand_index(labels, reference) == pytest.approx((4 - 2.8) / (6.5 - 2.8))
    assert adjusted_rand_index(reference, labels) == pytest.approx((4 - 2.8) / (6.5 - 2.8))


def test_chance_and_below():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 20000), rng.integers(0, 2, 20000)
    assert abs(adjusted_rand_index(a, b)) < 0.01
    # Splitting every true pair apart is worse than chance.
    assert adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) < 0
    # One group against two groups carries no information.
    assert adjusted_rand_index([0, 0, 0, 0], [0, 0, 1, 1]) == pytest.approx(0.0)
    assert adjusted_rand_index([0, 0, 0], [1, 1, 1]) == 1.0


def test_lengths_must_match():
    with pytest.raises(ValueError, match='different lengths'):
        adjusted_rand_index([0, 1], [0, 1, 1])
