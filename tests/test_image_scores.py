"""Curation scores (applications.common.image_scores) on tiny transformers, and the true alignment error."""
import math

import pytest
import torch

from applications.common.image_scores import (MISFIT_PARTS, PASS_SCORES, batch_scores, check_scores_apply, combine,
                                       parts_of, standardise)
from metrics import METRICS
from metrics.alignment_error import MISFIT_ERROR, alignment_errors, congealed_keypoints, template_keypoints
from models import get_stn
from models.perceptual.laplacian import LaplacianPyramidDistance
from models.spatial_transformers.geometry import identity_grid
from tests.test_curation import SIZE, make_stn
from utils.errors import UserError

KWARGS = {'padding_mode': 'border', 'iters': 1}


def images(n=4, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def still_flow(t):
    """Zero the flow stage's output layer: the flow is the identity."""
    with torch.no_grad():
        t.stns[-1].warp_head.flow_out[-1].weight.zero_()
        t.stns[-1].warp_head.flow_out[-1].bias.zero_()
    return t


def all_scores(t, x, **kwargs):
    congealed, grid = t(x, return_warp=True, **KWARGS)
    return batch_scores(t, x, 'cartesian', list(PASS_SCORES), KWARGS, LaplacianPyramidDistance(),
                        congealed.mean(0, keepdim=True), mean_grids=grid.mean(0, keepdim=True), **kwargs)


def test_every_score_of_a_tiny_model_is_finite_and_per_image():
    x = images()
    scores = all_scores(make_stn(), x)
    assert set(scores) == set(PASS_SCORES)
    for name, values in scores.items():
        assert values.shape == (4,) and torch.isfinite(values).all() and (values <= 0).all(), name
    # Random flow weights give every image its own flow, hence its own scores.
    assert scores['flow'].std() > 0 and scores['reapply'].std() > 0 and scores['flip'].std() > 0


def test_a_transformer_that_does_nothing_fits_every_image():
    # Identity similarity, still flow: nothing to undo, mirror and repeat agree, TV 0.
    t = still_flow(make_stn(zoom=1.0))
    scores = all_scores(t, images())
    for name in ('flow', 'flow_size', 'reapply', 'flip', 'iteration', 'outside', 'warp_distance'):
        torch.testing.assert_close(scores[name], torch.zeros(4), atol=1e-5, rtol=0, msg=name)


def test_reapply_and_iteration_measure_the_warp_still_wanted():
    # A fixed zoom of 1/2: applied to its own output it zooms by 1/2 again, moving each template
    # point p to p / 2, i.e. |p| / 2 in normalised units, |p| / 4 of the image side.
    t = still_flow(make_stn(zoom=0.5))
    grid = identity_grid(16)
    expected = grid.norm(dim=-1).mean() / 4
    scores = all_scores(t, images())
    torch.testing.assert_close(scores['reapply'], -expected.expand(4), atol=1e-5, rtol=1e-4)
    # Twice through the first stage: zoom 1/4 instead of 1/2, the grid moves by |p| / 4 (|p| / 8 of the side).
    torch.testing.assert_close(scores['iteration'], -(expected / 2).expand(4), atol=1e-5, rtol=1e-4)
    # A centred zoom is mirror-symmetric: the mirror's warp agrees.
    torch.testing.assert_close(scores['flip'], torch.zeros(4), atol=1e-5, rtol=0)


def test_flip_sees_a_warp_that_is_not_mirror_symmetric():
    # A shift of 0.25 to the right: the mirror is shifted right too, which mirrored back is a shift left;
    # the two warps differ by 0.5 in normalised x everywhere, a quarter of the image side.
    t = still_flow(make_stn(zoom=1.0, shift=0.25))
    scores = all_scores(t, images())
    torch.testing.assert_close(scores['flip'], torch.full((4,), -0.25), atol=1e-4, rtol=0)


def test_outside_and_warp_distance():
    # A centred zoom of 1/2 shifted right by 0.75 reads x in [0.25, 1.25]: a quarter of its columns lie outside.
    t = still_flow(make_stn(zoom=0.5, shift=0.75))
    x = images()
    scores = all_scores(t, x)
    torch.testing.assert_close(scores['outside'], torch.full((4,), -0.25), atol=1 / 16 + 1e-6, rtol=0)
    # Against the grid of a plain zoom of 1/2, every grid point is 0.75 off in x: 0.375 of the image side.
    plain_grid = still_flow(make_stn(zoom=0.5))(x[:1], return_warp=True, **KWARGS)[1]
    scores = batch_scores(t, x, 'cartesian', ['warp_distance'], KWARGS, mean_grids=plain_grid)
    torch.testing.assert_close(scores['warp_distance'], torch.full((4,), -0.375), atol=1e-4, rtol=0)


def test_mean_distance_is_the_loss_to_the_mean_congealed_image():
    t = make_stn()
    x = images()
    congealed = t(x, **KWARGS)
    means = torch.stack([congealed[0], congealed[1]])
    loss = LaplacianPyramidDistance()
    scores = batch_scores(t, x, 'cartesian', ['mean_distance'], KWARGS, loss, means,
                          heads=torch.tensor([0, 1, 1, 0]))
    expected = -loss(congealed, means[torch.tensor([0, 1, 1, 0])])
    torch.testing.assert_close(scores['mean_distance'], expected)
    assert scores['mean_distance'][0] == 0 and scores['mean_distance'][1] == 0 and scores['mean_distance'][2] < 0


def test_misfit_combines_standardised_parts():
    parts = {name: torch.tensor([0.0, -1.0, -2.0, -3.0, -10.0]).roll(i) for i, name in enumerate(PASS_SCORES)}
    misfit = combine('misfit', parts)
    expected = torch.stack([standardise(parts[p]) for p in MISFIT_PARTS]).mean(0)
    torch.testing.assert_close(misfit, expected)
    assert combine('flow', parts) is parts['flow']
    # Robust z-scores: median 0, median absolute deviation 1.
    z = standardise(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]))
    torch.testing.assert_close(z, torch.tensor([-2.0, -1.0, 0.0, 1.0, 97.0]))


def test_unknown_and_impossible_scores_are_refused():
    with pytest.raises(UserError, match="unknown score 'smoothness'"):
        parts_of(['smoothness'])
    assert parts_of(['misfit', 'flow']) == ['flow', *[p for p in PASS_SCORES if p in MISFIT_PARTS]]
    similarity = get_stn(['similarity'], flow_size=16, supersize=SIZE, channel_multiplier=0.5, max_channels=32)
    with pytest.raises(UserError, match='no flow stage'):
        check_scores_apply(similarity, ['flow'])
    check_scores_apply(similarity, ['reapply', 'flip', 'mean_distance'])


# ----------------------------------------------------------------------------- the truth per image

def test_alignment_error_of_a_known_shift():
    template = torch.tensor([[4.0, 4.0], [10.0, 6.0], [7.0, 12.0]])
    points = template.repeat(5, 1, 1)
    points[1] += torch.tensor([3.0, 4.0])     # 5 pixels off
    points[2, 0] += torch.tensor([0.0, 8.0])  # one of three keypoints 8 pixels off
    visible = torch.ones(5, 3, dtype=torch.bool)
    visible[3, 1] = False
    points[3, 1] = 100.0                      # invisible: ignored
    misfit = torch.tensor([False, False, False, False, True])
    points[4] = -50.0                         # an outlier: neither counted nor voting
    errors = alignment_errors(points, visible, 16, misfit)
    torch.testing.assert_close(errors, torch.tensor([0.0, 5 / 16, 8 / 3 / 16, 0.0, MISFIT_ERROR]))
    assert METRICS.get('alignment_errors') is alignment_errors
    # The template is the median: the shifted images do not move it.
    torch.testing.assert_close(template_keypoints(points[:4], visible[:4]), template)
    # No visible keypoint: a misfit too.
    visible[0] = False
    assert alignment_errors(points, visible, 16, misfit)[0] == pytest.approx(MISFIT_ERROR)
    assert MISFIT_ERROR == pytest.approx(0.5214, abs=1e-4)


def test_congealed_keypoints_follow_a_shifted_image():
    # Identity similarity and flow: a keypoint at pixel (x, y) of a 32-pixel image lands at the
    # template pixel (x, y) / 2 of the 16-pixel grid; a mirrored image's keypoint at the mirrored place.
    t = still_flow(make_stn(zoom=1.0))
    x = images(2)
    keypoints = torch.tensor([[[6.0, 10.0, 1.0], [20.0, 14.0, 1.0]]]).repeat(2, 1, 1)
    points, visible = congealed_keypoints(t, x, keypoints, mirrored=torch.tensor([False, True]),
                                          permutation=[1, 0], **KWARGS)
    assert visible.all()
    expected = (keypoints[0, :, :2] + 0.5) / 2 - 0.5
    assert (points[0] - expected).abs().max() <= 0.5  # nearest template pixel
    # Mirrored and permuted: keypoint 0 is the mirror of keypoint 1.
    mirrored = torch.stack([SIZE - 1 - keypoints[0, 1, 0], keypoints[0, 1, 1]])
    assert (points[1, 0] - ((mirrored + 0.5) / 2 - 0.5)).abs().max() <= 0.5
    errors = alignment_errors(points, visible, 16)
    assert errors.shape == (2,) and math.isfinite(float(errors.max()))


def test_spearman_of_monotone_and_reversed_orders():
    from metrics.alignment_error import spearman
    a = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7])
    assert spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # Ties take their mean rank: [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.arange(4.0)) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


# ----------------------------------------------------------------------------- clusters without a classifier

def two_head_stn():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return get_stn(['similarity', 'flow'], flow_size=16, supersize=SIZE, channel_multiplier=0.5, max_channels=32,
                       num_heads=2).eval()


def test_mean_assigner_picks_the_head_whose_mean_an_image_matches():
    from applications.common.cluster_by_means import MeanAssigner, fit_mean_assigner, head_means
    t = two_head_stn()
    x = images(2, seed=3)
    with torch.no_grad():
        means = torch.stack([t(x[:1], warp_policy=torch.tensor([0]), **KWARGS)[0],
                             t(x[1:], warp_policy=torch.tensor([1]), **KWARGS)[0]])
    assigner = MeanAssigner(t, means, LaplacianPyramidDistance(), flips=True, stn_kwargs=KWARGS)
    distances = assigner.distances(x)
    assert distances.shape == (2, 4) and distances[0, 0] == 0 and distances[1, 1] == 0
    assert assigner.assign(x).tolist() == [0, 1]
    inputs, logits, classes, mirrored = assigner.run_flip(x)
    assert not mirrored.any() and torch.equal(inputs, x)
    # A mirrored image is recognised as the mirror of its head's image.
    _, _, classes, mirrored = assigner.run_flip(x.flip(3))
    assert classes.tolist() == [2, 3] and mirrored.all()
    # Means over every image through every head, then refined over each head's own images.
    everything, counts = head_means(t, x, KWARGS)
    assert everything.shape == (2, 3, 16, 16) and counts.tolist() == [2, 2]
    fitted = fit_mean_assigner(t, x, LaplacianPyramidDistance(), rounds=1, stn_kwargs=KWARGS)
    assert fitted.means.shape == (2, 3, 16, 16) and torch.isfinite(fitted.means).all()


def test_compositions_rank_the_score_that_follows_the_error_first():
    from benchmarks.bench_curation import rank_compositions

    generator = torch.Generator().manual_seed(0)
    errors = torch.linspace(0.01, 0.3, 21)  # odd: the medians of the error and of its negation are one image
    labels = torch.zeros(21, dtype=torch.long)
    labels[-4:] = torch.tensor([1, 2, 3, 1])  # the worst four are outliers
    scores = {'iteration': -errors,  # follows the error exactly
              'flip': torch.randn(21, generator=generator),  # noise
              'outside': errors.clone()}  # backwards
    ranked = rank_compositions([{'scores': scores, 'errors': errors, 'labels': labels}] * 2, max_parts=2)
    assert len(ranked) == 3 + 3
    parts, total, per_seed = ranked[0]
    assert parts == ('iteration',) and total == pytest.approx(4.0)
    auc, rho, change = per_seed[0]
    assert auc == 1 and rho == pytest.approx(1.0)
    # The quantile rule (strictly above the 0.1 quantile) keeps the 18 lowest errors of 21.
    assert change == pytest.approx(float(errors[:18].mean() / errors.mean() - 1))
    assert ranked[-1][0] == ('outside',) and ranked[-1][1] == pytest.approx(-2.0)
    # A pair is the mean of its parts' robust z-scores: iteration + outside cancel out to a constant (ties).
    pair = next(entry for entry in ranked if entry[0] == ('iteration', 'outside'))
    assert pair[2][0][:2] == (0.5, 0.0)
