"""The weight-free generator-quality signal: feature distances and the keypoint regressor behind them."""
import pytest
import torch

from models.keypoint_regressor import KeypointRegressor
from training.keypoint_features import (feature_quality, generated_images, keypoint_error, rendered_faces,
                                        train_keypoint_regressor)
from metrics.feature_distances import frechet_distance, kernel_distance
from synthetic_world import NUM_KEYPOINTS

pytestmark = pytest.mark.usefixtures('one_thread')


def test_frechet_distance_of_gaussians_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = a + torch.tensor([1.0, 2.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)
    # N(0, I) against N(0, 4 I) in 3 dimensions: Tr(I + 4I - 2 * 2I) = 3.
    b = torch.randn(20000, 3, generator=g) * 2
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.05)


def test_kernel_distance_is_unbiased_and_grows_with_the_difference():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)
    same = kernel_distance(a, b)
    assert abs(same) < 0.02
    assert kernel_distance(a, b + 0.5) > kernel_distance(a, b + 0.2) > same + 0.02


def test_regressor_learns_keypoints_and_features_tell_rendered_from_noise():
    model = KeypointRegressor(5)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 5, 2)
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 128)

    trained = train_keypoint_regressor(16, n_train=300, steps=150, batch=32, seed=0)
    images, points, visible = rendered_faces(200, 16, seed=5)
    torch.manual_seed(0)
    chance = keypoint_error(KeypointRegressor(NUM_KEYPOINTS).eval(), images, points, visible)
    learned = keypoint_error(trained, images, points, visible)
    assert learned < 0.7 * chance

    other, _, _ = rendered_faces(200, 16, seed=6)
    noise = torch.rand(200, 3, 16, 16) * 2 - 1
    close, far = feature_quality(trained, images, other), feature_quality(trained, images, noise)
    assert far['fd'] > 3 * close['fd'] and far['kd'] > close['kd']


def test_generated_images_are_seeded_and_in_range():
    from models.stylegan2 import Generator
    torch.manual_seed(0)
    g = Generator(16, 8, 1, channel_max=8).eval()
    a, b = generated_images(g, 5, batch=2, seed=3), generated_images(g, 5, batch=2, seed=3)
    assert a.shape == (5, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
