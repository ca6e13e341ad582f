"""PCK-Transfer maths on hand-made pairs with a fake transformer."""
import math

import pytest
import torch

import metrics.pck_transfer as pck
from metrics.pck_transfer import bootstrap_pck, evaluate_pck_per_pair, evaluate_pck_transfer, format_pck_table

SIZE = 64
ALPHAS = [0.1, 0.05, 0.01]  # radii 6.4, 3.2 and 0.64 pixels on 64-pixel images


class PairList(torch.utils.data.Dataset):
    """PCK items built by hand. Images carry their index in pixel (0, 0) so the
    fake transformer can look up the true keypoints of image B."""

    def __init__(self, keypoints, visibility, pairs, permutation=None, thresholds=None, scales=None):
        self.keypoints, self.visibility, self.pairs = keypoints, visibility, pairs
        self.permutation = permutation
        self.thresholds, self.scales = thresholds, scales

    def __len__(self):
        return len(self.pairs)

    def image(self, index):
        img = torch.zeros(3, SIZE, SIZE)
        img[0, 0, 0] = index
        return img

    def __getitem__(self, i):
        a, b = self.pairs[i]
        item = {'imgsA': self.image(a), 'imgsB': self.image(b), 'kpsA': self.keypoints[a],
                'kpsB': self.keypoints[b], 'visA': self.visibility[a], 'visB': self.visibility[b]}
        if self.thresholds is not None:
            item.update(threshA=self.thresholds[a], threshB=self.thresholds[b],
                        scaleA=self.scales[a], scaleB=self.scales[b])
        return item


class FakeTransformer:
    """transfer_points returns the true keypoints of the target image plus chosen offsets."""

    def __init__(self, keypoints, offsets):
        self.keypoints = keypoints  # (num_images, P, 2)
        self.offsets = offsets  # (P, 2) added to every prediction
        self.calls = []

    def transfer_points(self, imgs_a, imgs_b, kps_a, **kwargs):
        self.calls.append(kwargs)
        target = imgs_b[:, 0, 0, 0].long()
        return self.keypoints[target] + self.offsets


def keypoints_grid(num_images, num_points):
    torch.manual_seed(0)
    return torch.rand(num_images, num_points, 2) * 40 + 10


def test_perfect_transfer_is_one_and_baseline_is_exact():
    kps = torch.tensor([[[10.0, 10.0], [20.0, 20.0]],
                        [[13.0, 14.0], [20.0, 22.0]]])  # image 1 = image 0 moved by (3, 4) / (0, 2)
    vis = torch.ones(2, 2, dtype=torch.bool)
    data = PairList(kps, vis, [(0, 1)])
    t = FakeTransformer(kps, torch.zeros(2, 2))
    result = evaluate_pck_transfer(t, data, ALPHAS, 'cpu', batch_size=4, flips=False, padding_mode='border')
    assert result['pck'] == {0.1: 1.0, 0.05: 1.0, 0.01: 1.0}
    # Identity errors 5 and 2 pixels: both within 6.4, one within 3.2, none within 0.64.
    assert result['baseline'] == {0.1: 1.0, 0.05: 0.5, 0.01: 0.0}
    assert result['pairs'] == 1 and result['keypoints'] == 2
    assert t.calls == [{'padding_mode': 'border'}]  # transformer options are passed on


def test_known_offsets_give_known_fractions():
    kps = keypoints_grid(6, 4)
    vis = torch.ones(6, 4, dtype=torch.bool)
    # Errors of 0, 2, 5 and 10 pixels for the four keypoints.
    offsets = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, -4.0], [0.0, 10.0]])
    data = PairList(kps, vis, [(0, 1), (2, 3), (4, 5), (1, 0), (3, 3)])
    result = evaluate_pck_transfer(FakeTransformer(kps, offsets), data, ALPHAS, 'cpu', batch_size=2,
                                   flips=False)
    assert result['pck'] == {0.1: 0.75, 0.05: 0.5, 0.01: 0.25}
    assert result['pairs'] == 5 and result['keypoints'] == 20


def test_invisible_keypoints_are_ignored():
    kps = keypoints_grid(4, 3)
    vis = torch.ones(4, 3, dtype=torch.bool)
    vis[1, 2] = False  # keypoint 2 hidden in image 1 (a B image)
    vis[2, 1] = False  # keypoint 1 hidden in image 2 (an A image)
    offsets = torch.tensor([[0.0, 0.0], [50.0, 0.0], [50.0, 0.0]])  # keypoints 1 and 2 always wrong
    data = PairList(kps, vis, [(0, 1), (2, 3)])
    result = evaluate_pck_transfer(FakeTransformer(kps, offsets), data, ALPHAS, 'cpu', flips=False)
    # Pair (0, 1) counts keypoints 0, 1; pair (2, 3) counts 0, 2: 2 of 4 correct.
    assert result['keypoints'] == 4
    assert result['pck'] == {0.1: 0.5, 0.05: 0.5, 0.01: 0.5}


def test_per_image_thresholds_use_image_b():
    kps = keypoints_grid(2, 2)
    vis = torch.ones(2, 2, dtype=torch.bool)
    offsets = torch.tensor([[4.0, 0.0], [0.0, 9.0]])
    # Image B (1): bounding box 50 original pixels, scale 2 -> radius 100 * alpha.
    data = PairList(kps, vis, [(0, 1)], thresholds=torch.tensor([1000.0, 50.0]), scales=torch.tensor([1.0, 2.0]))
    result = evaluate_pck_transfer(FakeTransformer(kps, offsets), data, ALPHAS, 'cpu', flips=False)
    # Radii 10, 5, 1: errors 4 and 9.
    assert result['pck'] == {0.1: 1.0, 0.05: 0.5, 0.01: 0.0}


def test_transfer_both_ways_counts_each_direction_with_its_own_radius():
    kps = keypoints_grid(2, 1)
    vis = torch.ones(2, 1, dtype=torch.bool)
    offsets = torch.tensor([[0.0, 6.0]])
    data = PairList(kps, vis, [(0, 1)], thresholds=torch.tensor([30.0, 100.0]), scales=torch.tensor([1.0, 1.0]))
    one_way = evaluate_pck_transfer(FakeTransformer(kps, offsets), data, [0.1], 'cpu', flips=False)
    both = evaluate_pck_transfer(FakeTransformer(kps, offsets), data, [0.1], 'cpu', flips=False,
                                 transfer_both_ways=True)
    assert one_way['pck'][0.1] == 1.0 and one_way['keypoints'] == 1  # radius 10 in B
    assert both['keypoints'] == 2 and both['pck'][0.1] == 0.5  # radius 3 in A misses


class MirroringTransformer(FakeTransformer):
    """match_flows mirrors every image B (pick 2) and reorders its keypoints."""

    def __init__(self, keypoints, offsets, permutation):
        super().__init__(keypoints, offsets)
        self.permutation = permutation
        self.mirrored_b = None

    def match_flows(self, imgs_a, imgs_b, kps_a, kps_b, permutation, **kwargs):
        kps_b = kps_b.clone()
        kps_b[..., 0] = imgs_b.size(-1) - 1 - kps_b[..., 0]
        kps_b = kps_b[:, permutation]
        self.mirrored_b = kps_b
        pick = torch.full((imgs_a.size(0), 1, 1, 1), 2)
        return imgs_a, imgs_b, kps_a, kps_b, pick

    def transfer_points(self, imgs_a, imgs_b, kps_a, **kwargs):
        predicted = self.mirrored_b.clone()
        predicted[:, 1] += 40  # the slot that now holds B's hidden keypoint 0 is wrong
        return predicted


def test_mirror_matching_reorders_visibility_with_the_keypoints():
    kps = keypoints_grid(2, 2)
    vis = torch.ones(2, 2, dtype=torch.bool)
    vis[1, 0] = False  # B's keypoint 0 is hidden; after the mirror it sits in slot 1
    permutation = torch.tensor([1, 0])
    data = PairList(kps, vis, [(0, 1)], permutation=permutation)
    t = MirroringTransformer(kps, None, permutation)
    result = evaluate_pck_transfer(t, data, ALPHAS, 'cpu', flips=True)
    assert result['keypoints'] == 1
    assert result['pck'] == {0.1: 1.0, 0.05: 1.0, 0.01: 1.0}


def test_num_pairs_and_rank_sharding(monkeypatch):
    kps = keypoints_grid(10, 2)
    vis = torch.ones(10, 2, dtype=torch.bool)
    pairs = [(i, (i + 1) % 10) for i in range(10)]
    offsets = torch.zeros(2, 2)
    data = PairList(kps, vis, pairs)
    assert evaluate_pck_transfer(FakeTransformer(kps, offsets), data, ALPHAS, 'cpu', flips=False,
                                 num_pairs=7)['pairs'] == 7
    # Two processes: each takes every other pair; together they cover all of them once.
    import utils.distributed as distributed
    seen = []
    for rank in range(2):
        monkeypatch.setattr(distributed, 'get_rank', lambda rank=rank: rank)
        monkeypatch.setattr(distributed, 'get_world_size', lambda: 2)
        share = distributed.rank_share(list(range(7)))
        assert len(share) == 4 - rank
        seen += share
    assert sorted(seen) == list(range(7))


def test_bootstrap_matches_binomial_spread():
    counted = torch.ones(400)
    correct = torch.zeros(400, 2)
    correct[:200, 0] = 1  # half correct at the first alpha
    correct[:, 1] = 1  # all correct at the second
    per_pair = {'correct': correct, 'baseline': correct, 'counted': counted}
    stds = bootstrap_pck(per_pair, [0.1, 0.05], num_bootstrap=2000, seed=0)
    assert stds[0.1] == pytest.approx(math.sqrt(0.25 / 400), rel=0.1)
    assert stds[0.05] == 0.0
    assert bootstrap_pck(per_pair, [0.1, 0.05], 50, seed=3) == bootstrap_pck(per_pair, [0.1, 0.05], 50, seed=3)


def test_per_pair_rows_and_table():
    kps = keypoints_grid(4, 2)
    vis = torch.ones(4, 2, dtype=torch.bool)
    data = PairList(kps, vis, [(0, 1), (2, 3)])
    offsets = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    per_pair = evaluate_pck_per_pair(FakeTransformer(kps, offsets), data, ALPHAS, 'cpu', flips=False)
    assert per_pair['correct'].tolist() == [[2, 1, 1], [2, 1, 1]]
    assert per_pair['counted'].tolist() == [2, 2]
    result = pck.summarize(per_pair, ALPHAS)
    table = format_pck_table(result, ALPHAS)
    lines = table.splitlines()
    assert lines[0] == '| alpha | PCK-Transfer | identity baseline |'
    assert lines[2].startswith('| 0.1 | 100.00% |')
    assert lines[3].startswith('| 0.05 | 50.00% |')
    assert len(lines) == 2 + len(ALPHAS)


def test_flips_skipped_without_flow_and_clustering_models_refused():
    kps = keypoints_grid(2, 2)
    vis = torch.ones(2, 2, dtype=torch.bool)
    data = PairList(kps, vis, [(0, 1)])
    similarity_only = FakeTransformer(kps, torch.zeros(2, 2))
    similarity_only.is_flow = False  # has no match_flows: calling it would fail
    assert evaluate_pck_transfer(similarity_only, data, ALPHAS, 'cpu', flips=True)['pck'][0.01] == 1.0
    clustering = FakeTransformer(kps, torch.zeros(2, 2))
    clustering.num_heads = 2
    with pytest.raises(pck.UserError):
        evaluate_pck_transfer(clustering, data, ALPHAS, 'cpu', flips=False)


def test_visibility_from_a_third_keypoint_column():
    kps = keypoints_grid(2, 2)
    batch = {'imgsA': torch.stack([PairList.image(None, 0)]), 'imgsB': torch.stack([PairList.image(None, 1)]),
             'kpsA': torch.cat([kps[:1], torch.tensor([[[1.0], [0.0]]])], -1),
             'kpsB': torch.cat([kps[1:], torch.ones(1, 2, 1)], -1)}
    offsets = torch.tensor([[0.0, 0.0], [30.0, 0.0]])  # keypoint 1 is wrong but hidden in A
    counts = pck.evaluate_batch(FakeTransformer(kps, offsets), batch, torch.tensor(ALPHAS), flips=False)
    assert counts['counted'].tolist() == [1.0] and counts['correct'].tolist() == [[1.0, 1.0, 1.0]]
