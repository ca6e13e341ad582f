"""Spatial transformer building blocks: sampling, anti-aliasing, geometry, flow
upsampling, point maps and warp checks (no networks involved)."""
import math

import pytest
import torch
import torch.nn.functional as F

from utils.errors import UserError
from models.spatial_transformers.flow_upsampling import convex_upsample
from models.spatial_transformers.geometry import (
    apply_affine, compose_affine, convert_points, identity_grid, invert_affine,
    normalize_points, resize_grid, similarity_matrices, unnormalize_points)
from models.spatial_transformers.point_maps import nearest_grid_pixels, sample_grid_at_points
from models.spatial_transformers.sampling import (
    MipmapWarp, TentDownsample, bilinear_sample, check_padding_mode, mipmap_levels)
from models.spatial_transformers.warp_checks import flow_total_variation, warp_exceeds_image_bounds


def rotation_scale_grid(size, angle, scale, shift=(0.0, 0.0), batch=1):
    matrix = torch.tensor([[scale * math.cos(angle), -scale * math.sin(angle), shift[0]],
                           [scale * math.sin(angle), scale * math.cos(angle), shift[1]]])
    return F.affine_grid(matrix.expand(batch, 2, 3), (batch, 1, size, size), align_corners=False)


def test_mipmap_identity_at_same_size_returns_the_image():
    image = torch.randn(2, 3, 24, 24)
    out = MipmapWarp()(image, identity_grid(24, batch=2))
    assert torch.allclose(out, image, atol=1e-5)


def test_mipmap_equals_bilinear_when_magnifying():
    image = torch.randn(1, 3, 16, 16)
    grid = rotation_scale_grid(40, angle=0.4, scale=0.7)  # < 1 source pixel between samples
    assert mipmap_levels(grid, 16, 16, 2.5).max() == 0
    assert torch.allclose(MipmapWarp()(image, grid), bilinear_sample(image, grid), atol=1e-6)


def test_mipmap_levels_follow_minification():
    grid = identity_grid(16)  # a 64-pixel source seen at 16 pixels
    levels = mipmap_levels(grid, 64, 64, max_level=10)
    # Samples are 2 / 16 apart in grid units; a grid unit spans (64 - 1) / 2 pixels.
    expected = math.log2(2 / 16 * 63 / 2)
    assert torch.allclose(levels, torch.full_like(levels, expected), atol=1e-5)
    assert mipmap_levels(grid, 64, 64, max_level=1.5).max() == 1.5


def test_antialiasing_reduces_aliasing_when_minifying():
    size = 128
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    checkerboard = ((xs + ys) % 2 * 2 - 1).float().expand(1, 3, size, size)
    grid = rotation_scale_grid(32, angle=0.1, scale=0.97)  # ~4x minification
    # The band-limited result is flat grey; any energy left is aliasing.
    plain_energy = bilinear_sample(checkerboard, grid).pow(2).mean()
    mipmap_energy = MipmapWarp()(checkerboard, grid).pow(2).mean()
    assert plain_energy > 0.05
    assert mipmap_energy < 0.1 * plain_energy


def test_gaussian_stack_handles_non_power_of_two_sizes():
    image = torch.randn(1, 2, 24, 40)
    stack = MipmapWarp().gaussian_stack(image, 3)
    assert stack.shape == (1, 2, 3, 24, 40)
    assert torch.equal(stack[:, :, 0], image)
    # Blurring lowers the variance of white noise level by level.
    variances = stack.var(dim=(0, 1, 3, 4))
    assert variances[0] > variances[1] > variances[2]


@pytest.mark.parametrize('mode', ['border', 'zeros', 'reflection'])
def test_padding_modes_match_grid_sample(mode):
    image = torch.rand(1, 3, 16, 16) + 0.5
    grid = rotation_scale_grid(16, angle=0.0, scale=0.9, shift=(0.6, 0.0))
    out = MipmapWarp()(image, grid, padding_mode=mode)
    expected = F.grid_sample(image, grid, padding_mode=mode, align_corners=False)
    assert torch.allclose(out, expected, atol=1e-6)
    right_edge = out[..., -1]
    if mode == 'zeros':
        assert right_edge.abs().max() < 1e-6
    else:
        assert right_edge.min() > 0.4


def test_padding_mode_errors_and_alias():
    assert check_padding_mode('zero') == 'zeros'
    with pytest.raises(UserError, match='padding mode'):
        check_padding_mode('wrap')


def test_tent_downsample_preserves_constants_and_averages():
    down = TentDownsample(4)
    assert down.kernel_horz.shape == (3, 1, 1, 8)
    constant = torch.full((2, 3, 32, 32), 0.25)
    out = down(constant)
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(out, constant[..., :8, :8], atol=1e-6)
    noise = torch.randn(1, 3, 64, 64)
    assert down(noise).std() < 0.6 * noise.std()


def test_similarity_matrices_identity_and_angle():
    assert torch.allclose(similarity_matrices(torch.zeros(3, 4)), torch.eye(2, 3).expand(3, 2, 3))
    angle, scale = 0.5, 1.5
    params = torch.tensor([math.atanh(angle / math.pi), math.log(scale), 0.2, -0.1])
    matrix = similarity_matrices(params)
    expected = torch.tensor([[scale * math.cos(angle), -scale * math.sin(angle), 0.2],
                             [scale * math.sin(angle), scale * math.cos(angle), -0.1]])
    assert torch.allclose(matrix, expected, atol=1e-6)


def test_affine_inverse_composition_and_application():
    matrix = similarity_matrices(torch.randn(5, 4) * 0.5)
    identity = compose_affine(matrix, invert_affine(matrix))
    assert torch.allclose(identity, torch.eye(2, 3).expand(5, 2, 3), atol=1e-5)
    points = torch.randn(5, 7, 2)
    moved = apply_affine(matrix, points)
    manual = torch.einsum('nij,npj->npi', matrix[:, :, :2], points) + matrix[:, None, :, 2]
    assert torch.allclose(moved, manual, atol=1e-6)
    grid = apply_affine(matrix, identity_grid(8, batch=5))
    expected = F.affine_grid(matrix, (5, 1, 8, 8), align_corners=False)
    assert torch.allclose(grid, expected, atol=1e-6)


def test_point_normalisation_is_align_corners_false():
    size = 32
    pixels = torch.tensor([[[0.0, 31.0], [15.5, 7.0]]])
    normalized = normalize_points(pixels, size, size)
    assert torch.allclose(normalized, (2 * pixels + 1) / size - 1, atol=1e-6)
    assert torch.allclose(unnormalize_points(normalized, size, size), pixels, atol=1e-5)
    # Resolution changes map the first and last pixels onto each other.
    assert torch.allclose(convert_points(pixels, 32, 64), pixels * 63 / 31, atol=1e-4)


def test_resize_grid_keeps_identity_inside_the_border():
    resized = resize_grid(identity_grid(8), 20)
    assert resized.shape == (1, 20, 20, 2)
    # Bilinear resizing holds the outermost half source pixel constant.
    assert torch.allclose(resized[:, 1:-1, 1:-1], identity_grid(20)[:, 1:-1, 1:-1], atol=1e-6)
    assert torch.equal(resize_grid(identity_grid(8), 8), identity_grid(8))


def test_convex_upsample_constant_flow_and_one_hot_weights():
    factor, h, w = 4, 3, 5
    flow = torch.full((2, h, w, 2), 0.1)
    logits = torch.randn(2, 9 * factor * factor, h, w)
    fine = convex_upsample(flow, logits, factor)
    assert fine.shape == (2, h * factor, w * factor, 2)
    # In the interior every neighbour holds the same vector; weights sum to one.
    assert torch.allclose(fine[:, factor:-factor, factor:-factor], torch.full_like(
        fine[:, factor:-factor, factor:-factor], 0.1 * factor), atol=1e-6)
    # Weights concentrated on the centre neighbour (index 4) reproduce nearest upsampling.
    coarse = torch.randn(1, h, w, 2)
    centre = torch.full((1, 9, factor, factor, h, w), -1e4)
    centre[:, 4] = 0
    fine = convex_upsample(coarse, centre.reshape(1, -1, h, w), factor)
    nearest = coarse.repeat_interleave(factor, 1).repeat_interleave(factor, 2) * factor
    assert torch.allclose(fine, nearest, atol=1e-5)


def test_grid_lookup_and_nearest_inverse():
    grid = apply_affine(similarity_matrices(torch.tensor([[0.1, -0.2, 0.05, 0.1]])),
                        identity_grid(16))
    template_pixels = torch.tensor([[[3.0, 4.0], [10.0, 12.0], [7.0, 7.0]]])
    template = normalize_points(template_pixels, 16, 16)
    source = sample_grid_at_points(grid, template)
    assert torch.allclose(source, grid[0, [4, 12, 7], [3, 10, 7]].unsqueeze(0), atol=1e-6)
    assert torch.equal(nearest_grid_pixels(grid, source), template_pixels)


def test_nearest_inverse_in_chunks_matches_one_pass(monkeypatch):
    import models.spatial_transformers.point_maps as point_maps
    grid = apply_affine(similarity_matrices(torch.randn(2, 4) * 0.2), identity_grid(8, batch=2))
    points = torch.rand(2, 50, 2) * 2 - 1
    whole = nearest_grid_pixels(grid, points)
    monkeypatch.setattr(point_maps, '_MAX_TABLE_ENTRIES', 2 * 2 * 64 * 3)  # three points per chunk
    assert torch.equal(point_maps.nearest_grid_pixels(grid, points), whole)
    # Brute force over every grid entry.
    distances = (grid.reshape(2, 64, 1, 2) - points[:, None]).norm(dim=-1)
    flat = distances.argmin(dim=1)
    assert torch.equal(whole, torch.stack([flat % 8, flat // 8], dim=-1).float())


def test_flow_total_variation():
    constant = torch.full((2, 8, 8, 2), 0.3)
    assert torch.allclose(flow_total_variation(constant), torch.zeros(2))
    ramp = torch.zeros(1, 8, 8, 2)
    ramp[..., 0] = torch.arange(8.0) * 0.1  # horizontal steps of 0.1
    expected = 0.5 * 0.1 ** 2 / 2  # Huber of the x steps; y steps are zero (both averaged over x, y)
    assert torch.allclose(flow_total_variation(ramp), torch.tensor([expected]), atol=1e-7)
    assert flow_total_variation(torch.randn(1, 8, 8, 2))[0] > flow_total_variation(ramp)[0]


def test_warp_exceeds_image_bounds():
    inside = identity_grid(16, batch=2)
    zoomed_out = F.affine_grid(torch.eye(2, 3).expand(2, 2, 3) * 1.3, (2, 1, 16, 16),
                               align_corners=False)
    assert not warp_exceeds_image_bounds(inside).any()
    assert warp_exceeds_image_bounds(zoomed_out).all()
    # A landscape image (half as tall as wide) padded to a square: the identity
    # reads the padding above and below it.
    bounds = torch.tensor([[50.0, 100.0], [100.0, 100.0]])
    assert warp_exceeds_image_bounds(inside, bounds).tolist() == [True, False]
