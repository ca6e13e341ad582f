"""Gaussian splatting: placement, footprint, mass, sigma/opacity and blending."""
import math

import pytest
import torch

import ops.splat_native as splat_native
from ops.splat import gaussian_splat, splat_points


def dense_reference(points, values, sigma, height, width):
    """Every pixel against every point, with the same window rule (slow, obvious)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                            torch.arange(width, dtype=torch.float64), indexing='ij')
    acc = torch.zeros(points.size(0), values.size(-1), height, width, dtype=torch.float64)
    wsum = torch.zeros(points.size(0), 1, height, width, dtype=torch.float64)
    for n in range(points.size(0)):
        for p in range(points.size(1)):
            x, y = points[n, p].double().tolist()
            if not (0 <= x < width and 0 <= y < height):
                continue
            r = 2 * sigma
            in_window = ((xs >= math.floor(x - r)) & (xs <= math.ceil(x + r))
                         & (ys >= math.floor(y - r)) & (ys <= math.ceil(y + r)))
            w = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)) * in_window
            acc[n] += w * values[n, p].double().view(-1, 1, 1)
            wsum[n, 0] += w
    return acc, wsum


def test_point_lands_on_its_pixel_with_gaussian_weights():
    points = torch.tensor([[[5.0, 7.0]]])
    values = torch.tensor([[[2.0]]])
    acc, weights = gaussian_splat(points, values, sigma=1.0, height=12, width=10)
    assert acc.shape == (1, 1, 12, 10) and weights.shape == (1, 1, 12, 10)
    flat_peak = int(weights.view(-1).argmax())
    assert divmod(flat_peak, 10) == (7, 5)  # row y=7, column x=5
    assert weights[0, 0, 7, 5].item() == pytest.approx(1.0)
    assert weights[0, 0, 7, 6].item() == pytest.approx(math.exp(-0.5))
    assert weights[0, 0, 8, 6].item() == pytest.approx(math.exp(-1.0))
    assert weights[0, 0, 9, 7].item() == pytest.approx(math.exp(-4.0))
    # The window ends 2 sigma from the point: nothing three pixels away.
    assert weights[0, 0, 7, 8].item() == 0 and weights[0, 0, 4, 5].item() == 0
    torch.testing.assert_close(acc, 2 * weights)


def test_sub_pixel_point_centroid():
    points = torch.tensor([[[5.5, 7.25]]])
    _, weights = gaussian_splat(points, torch.ones(1, 1, 1), sigma=1.0, height=16, width=16,
                                normalize_footprint=True)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing='ij')
    w = weights[0, 0]
    assert (w * xs).sum().item() == pytest.approx(5.5, abs=0.05)
    assert (w * ys).sum().item() == pytest.approx(7.25, abs=0.05)


def test_matches_dense_reference():
    torch.manual_seed(0)
    points = torch.rand(2, 30, 2) * torch.tensor([14.0, 11.0]) - 1  # some fall outside
    values = torch.randn(2, 30, 3)
    acc, weights = gaussian_splat(points, values, sigma=1.3, height=10, width=13)
    ref_acc, ref_w = dense_reference(points, values, 1.3, 10, 13)
    torch.testing.assert_close(acc.double(), ref_acc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.double(), ref_w, atol=1e-5, rtol=1e-5)


def test_mass_is_conserved_and_outside_points_ignored():
    torch.manual_seed(1)
    inside = torch.rand(3, 50, 2) * 15.99  # includes points near the border
    outside = torch.tensor([[-0.5, 3.0], [16.0, 2.0], [4.0, -3.0], [float('nan'), 1.0]]).expand(3, 4, 2)
    points = torch.cat([inside, outside], dim=1)
    values = torch.rand(3, 54, 2)
    acc, weights = gaussian_splat(points, values, sigma=1.7, height=16, width=16, normalize_footprint=True)
    expected = values[:, :50].sum(dim=1)  # (N, C): only the in-image points deposit
    torch.testing.assert_close(acc.sum(dim=(2, 3)), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.full((3,), 50.0), rtol=1e-5, atol=1e-4)
    assert torch.isfinite(acc).all()


def test_sigma_controls_the_spread_per_image():
    points = torch.tensor([[[16.0, 16.0]], [[16.0, 16.0]]])
    _, weights = gaussian_splat(points, torch.ones(2, 1, 1), sigma=torch.tensor([0.5, 2.0]),
                                height=33, width=33, normalize_footprint=True)
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing='ij')
    spread = ((xs - 16) ** 2 * weights[:, 0]).sum(dim=(1, 2))
    # Variance along x of the sampled, truncated Gaussian (offsets -ceil(2s)..ceil(2s)).
    for image, s in enumerate([0.5, 2.0]):
        offsets = range(-math.ceil(2 * s), math.ceil(2 * s) + 1)
        g = [math.exp(-d * d / (2 * s * s)) for d in offsets]
        expected = sum(d * d * w for d, w in zip(offsets, g)) / sum(g)
        assert spread[image].item() == pytest.approx(expected, rel=1e-5)
    assert spread[0] < 0.25 < 2.5 < spread[1] < 4.0
    nonzero = (weights[:, 0] > 0).sum(dim=(1, 2))
    assert nonzero[0] < nonzero[1]


def test_chunking_gives_the_same_result(monkeypatch):
    torch.manual_seed(2)
    points = torch.rand(2, 40, 2) * 20
    values = torch.randn(2, 40, 3)
    whole = gaussian_splat(points, values, 1.1, 20, 20)
    monkeypatch.setattr(splat_native, '_CELLS_PER_CHUNK', 200)  # a handful of points per chunk
    chunked = gaussian_splat(points, values, 1.1, 20, 20)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_rejects_bad_sigma_and_shapes():
    with pytest.raises(ValueError):
        gaussian_splat(torch.zeros(1, 2, 2), torch.zeros(1, 2, 1), 0.0, 4, 4)
    with pytest.raises(ValueError):
        gaussian_splat(torch.zeros(1, 2, 2), torch.zeros(1, 3, 1), 1.0, 4, 4)
    with pytest.raises(ValueError):
        gaussian_splat(torch.zeros(2, 2, 2), torch.zeros(2, 2, 1), torch.ones(3), 4, 4)


def dense_grid_points(size):
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing='ij')
    return torch.stack([xs.flatten(), ys.flatten()], -1).unsqueeze(0)  # (1, size*size, 2)


def test_splat_points_opacity_and_alpha():
    size = 8
    images = torch.full((1, 3, size, size), -1.0)
    points = dense_grid_points(size)
    colors = torch.tensor([1.0, 0.0, 0.5]).expand(1, points.size(1), 3)
    # A point on every pixel covers the image completely: opacity alone decides the mix.
    full = splat_points(images, points, sigma=1.0, opacity=1.0, colors=colors)
    torch.testing.assert_close(full, colors[0, 0].view(1, 3, 1, 1).expand_as(images))
    half = splat_points(images, points, sigma=1.0, opacity=0.5, colors=colors)
    torch.testing.assert_close(half, (0.5 * colors[0, 0] - 0.5).view(1, 3, 1, 1).expand_as(images))
    none = splat_points(images, points, sigma=1.0, opacity=0.0, colors=colors)
    torch.testing.assert_close(none, images)
    transparent = splat_points(images, points, sigma=1.0, opacity=1.0, colors=colors,
                               alpha_channel=torch.zeros(1, points.size(1), 1))
    torch.testing.assert_close(transparent, images)


def test_splat_points_single_point_fades_with_distance():
    images = torch.zeros(2, 3, 9, 9)
    points = torch.tensor([[4.0, 4.0]]).expand(2, 1, 2)
    colors = torch.ones(1, 1, 3)
    out = splat_points(images, points, sigma=1.0, opacity=1.0, colors=colors)
    assert out[:, :, 4, 4].allclose(torch.ones(2, 3))  # full coverage at the point
    assert out[0, 0, 4, 5].item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert out[0, 0, 0, 0].item() == 0  # outside the window: untouched
    assert out.shape == images.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    torch.manual_seed(3)
    points = torch.rand(4, 500, 2) * 64
    values = torch.randn(4, 500, 3)
    cpu = gaussian_splat(points, values, 1.3, 64, 64)
    gpu = gaussian_splat(points.cuda(), values.cuda(), 1.3, 64, 64)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), atol=1e-4, rtol=1e-4)
