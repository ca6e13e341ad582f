"""Spatial transformer networks on small configurations: identity at start,
known warps undone, keypoint maps, mirrors, cluster heads, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from utils.errors import UserError
from models import get_stn
from models.spatial_transformers import ComposedSTN, MipmapWarp, SpatialTransformer
from models.spatial_transformers.geometry import (
    apply_affine, identity_grid, invert_affine, normalize_points, resize_grid, similarity_matrices,
    unnormalize_points)
from models.spatial_transformers.sampling import bilinear_sample

SMALL = dict(channel_multiplier=0.125, max_channels=32)


def small_stn(transforms, flow_size=16, supersize=32, **kwargs):
    torch.manual_seed(0)
    return get_stn(transforms, flow_size=flow_size, supersize=supersize, **SMALL, **kwargs)


def blobs(n, size, seed=0):
    """Smooth images in [-1, 1]: a few Gaussian blobs per channel."""
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size) + 0.5) / size
    ys, xs = torch.meshgrid(coords, coords, indexing='ij')
    images = torch.zeros(n, 3, size, size)
    for _ in range(4):
        centre = torch.rand(n, 3, 2, generator=gen) * 0.6 + 0.2
        weight = torch.rand(n, 3, 1, 1, generator=gen) * 2 - 1
        dist = (xs - centre[..., 0, None, None]) ** 2 + (ys - centre[..., 1, None, None]) ** 2
        images += weight * torch.exp(-dist / 0.02)
    return images.clamp(-1, 1)


def set_similarity(head, angle, scale, shift_x, shift_y):
    """Make a similarity head predict one fixed warp, whatever the image."""
    raw = torch.tensor([math.atanh(angle / math.pi), math.log(scale), shift_x, shift_y])
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.copy_(raw.repeat_interleave(head.num_heads))


def randomize_heads(stn, seed=0, flow_scale=0.05, similarity_scale=0.02, biases=True):
    """Random last head layers; without ``biases`` the warps depend only on the image."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in stn.named_parameters():
            if name.endswith('bias') and not biases:
                continue
            if 'warp_head.linear' in name:
                param.copy_(torch.randn(param.shape, generator=gen) * similarity_scale)
            elif 'warp_head.flow_out.2' in name:
                param.copy_(torch.randn(param.shape, generator=gen) * flow_scale)


# ----- construction -----

def test_get_stn_builds_single_and_composed():
    assert isinstance(small_stn('similarity'), SpatialTransformer)
    assert isinstance(small_stn(['flow']), SpatialTransformer)
    composed = small_stn(['similarity', 'flow'])
    assert isinstance(composed, ComposedSTN) and composed.is_flow
    assert composed.identity_flow.shape == (1, 16, 16, 2)


@pytest.mark.parametrize('kwargs, message', [
    (dict(transforms=['flow', 'similarity']), 'flow stage can only come last'),
    (dict(transforms='affine'), "unknown transform 'affine'"),
    (dict(transforms='similarity', flow_size=24), 'power of two'),
    (dict(transforms='similarity', supersize=48), 'even multiple'),
    (dict(transforms='similarity', num_heads=0), 'num_heads'),
])
def test_bad_configurations_raise_user_errors(kwargs, message):
    args = dict(flow_size=16, supersize=32, **SMALL)
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        get_stn(**args)


# ----- identity at initialisation -----

@pytest.mark.parametrize('transforms', ['similarity', ['similarity', 'flow']])
def test_identity_at_initialisation(transforms):
    stn = small_stn(transforms)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, grid = stn(images, return_warp=True)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(grid, identity_grid(16, batch=2), atol=1e-6)
    assert torch.allclose(out, MipmapWarp()(images, identity_grid(16, batch=2)), atol=1e-5)
    # At the regression resolution the identity returns the input itself.
    same_size = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(stn(same_size), same_size, atol=1e-5)


@pytest.mark.parametrize('resolution', [8, 40])
def test_output_resolution_above_and_below_flow_size(resolution):
    stn = small_stn(['similarity', 'flow'])
    images = blobs(2, 32)
    with torch.no_grad():
        out, grid, flow = stn(images, output_resolution=resolution, return_warp=True,
                              return_flow=True)
    assert out.shape == (2, 3, resolution, resolution)
    assert grid.shape == (2, resolution, resolution, 2)
    assert flow.shape == (2, 16, 16, 2)  # the residual flow stays at flow_size
    # The flow_size warp is resized (not the warped image), so its outermost half
    # cell is held constant; inside, it is the identity at the new resolution.
    expected_grid = resize_grid(identity_grid(16, batch=2), resolution)
    assert torch.allclose(grid, expected_grid, atol=1e-6)
    inner = slice(resolution // 16 + 1, -(resolution // 16 + 1))
    assert torch.allclose(grid[:, inner, inner], identity_grid(resolution, batch=2)[:, inner, inner],
                          atol=1e-6)
    assert torch.allclose(out, MipmapWarp()(images, expected_grid), atol=1e-5)


def test_input_sizes():
    stn = small_stn('similarity')
    with torch.no_grad():
        assert stn(torch.randn(1, 3, 64, 64)).shape == (1, 3, 16, 16)  # an even multiple
        with pytest.raises(UserError, match='resize them'):
            stn(torch.randn(1, 3, 24, 24))
        with pytest.raises(UserError, match='square'):
            stn(torch.randn(1, 3, 32, 16))


# ----- a known similarity is undone; points follow -----

ANGLE, SCALE, SHIFT = 0.3, 0.8, (0.1, -0.05)


def warped_by_inverse(images, matrix):
    """Images J with J(M u) = I(u): what the transformer with warp M must undo."""
    inverse = invert_affine(matrix).expand(images.shape[0], 2, 3)
    return bilinear_sample(images, F.affine_grid(inverse, images.shape, align_corners=False))


@pytest.mark.parametrize('transforms', ['similarity', ['similarity', 'flow']])
def test_known_similarity_is_undone_and_points_map_back(transforms):
    stn = small_stn(transforms, flow_size=32, supersize=32)
    head = stn.warp_head if isinstance(stn, SpatialTransformer) else stn.stns[0].warp_head
    set_similarity(head, ANGLE, SCALE, *SHIFT)
    matrix = similarity_matrices(head.linear.bias.detach().view(4, 1).T)
    original = blobs(2, 32)
    moved = warped_by_inverse(original, matrix)
    with torch.no_grad():
        restored, found = stn(moved, return_flow=True)
    if isinstance(stn, SpatialTransformer):
        assert torch.allclose(found, matrix.expand(2, 2, 3), atol=1e-6)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert (restored - original)[inner].abs().mean() < 0.02
    assert (moved - original)[inner].abs().mean() > 0.1  # the warp was not trivial

    template_pixels = torch.tensor([[[8.0, 9.0], [20.0, 14.0], [15.0, 23.0]]]).repeat(2, 1, 1)
    template = normalize_points(template_pixels, 32, 32)
    image_points = unnormalize_points(
        torch.einsum('ij,npj->npi', matrix[0, :, :2], template) + matrix[0, :, 2], 32, 32)
    with torch.no_grad():
        mapped_in = stn.uncongeal_points(moved, template)
        mapped_out = stn.congeal_points(moved, image_points)
        if isinstance(stn, SpatialTransformer):
            mapped_out = unnormalize_points(mapped_out, 32, 32)  # normalised template positions
    assert (mapped_in - image_points).norm(dim=-1).max() < 1.0
    assert (mapped_out - template_pixels).norm(dim=-1).max() < 1.0


@pytest.mark.parametrize('transforms, num_heads', [
    ('similarity', 1), ('flow', 1), (['similarity', 'flow'], 1), (['similarity', 'similarity'], 1),
    (['similarity', 'flow'], 3)])
def test_kept_warp_maps_points_and_images_exactly_like_a_network_pass(transforms, num_heads):
    stn = small_stn(transforms, num_heads=num_heads).eval()
    randomize_heads(stn, flow_scale=0.1, similarity_scale=0.2)
    images = blobs(3, 32)
    points = torch.rand(3, 20, 2) * 1.8 - 0.9
    pixels = torch.rand(3, 20, 2) * 15
    policy = torch.tensor([2, 0, 1]) if num_heads > 1 else 'cartesian'
    iters = 2 if not stn.is_flow else 1
    kwargs = dict(warp_policy=policy, iters=iters, padding_mode='reflection')
    with torch.no_grad():
        # The reference: what uncongeal_points computed before it was split (grid or matrix read directly).
        grid_fs, last = stn(images, return_warp=True, return_flow=True, **kwargs)[1:]
        congealed_24, grid_24 = stn(images, output_resolution=24, return_warp=True, **kwargs)
        single_similarity = isinstance(stn, SpatialTransformer) and not stn.is_flow

        def reference(grid, pts):
            moved = apply_affine(last, pts) if single_similarity else F.grid_sample(
                grid.permute(0, 3, 1, 2), pts.unsqueeze(2), align_corners=False,
                padding_mode='border').squeeze(3).permute(0, 2, 1)
            return unnormalize_points(moved, 32, 32)

        # The warp kept from a pass at another output resolution serves every resolution.
        warp, congealed = stn.compute_warp(images, output_resolution=24, return_congealed_img=True, **kwargs)
        assert torch.equal(congealed, congealed_24)
        assert torch.equal(stn.warp_grid(warp, 24), grid_24) and torch.equal(stn.warp_grid(warp), grid_fs)
        assert torch.equal(stn.warp_images(images, warp, 24, 'reflection'), congealed_24)
        assert torch.equal(stn.uncongeal_points_with_warp(warp, points, 32), reference(grid_fs, points))
        assert torch.equal(stn.uncongeal_points_with_warp(warp, points, 32, output_resolution=24),
                           reference(grid_24, points))
        assert torch.equal(stn.uncongeal_points(images, points, **kwargs), reference(grid_fs, points))
        found, aligned = stn.uncongeal_points(images, points, output_resolution=24, return_congealed_img=True,
                                              **kwargs)
        assert torch.equal(found, reference(grid_24, points)) and torch.equal(aligned, congealed_24)
        # Pixel templates: the flow_size grid, or an image-sized template for a single similarity.
        template_size = 32 if single_similarity else 16
        assert torch.equal(stn.uncongeal_points_with_warp(warp, pixels, 32, normalize_input_points=True),
                           reference(grid_fs, normalize_points(pixels, 32, template_size)))
    assert (reference(grid_fs, points) - unnormalize_points(points, 32, 32)).abs().max() > 0.5  # warps move


def test_chained_similarity_stages_compose_their_warps():
    """similarity, similarity, flow: the second stage refines the first one's output."""
    stn = small_stn(['similarity', 'similarity', 'flow'], flow_size=32, supersize=32)
    set_similarity(stn.stns[0].warp_head, ANGLE, SCALE, *SHIFT)
    set_similarity(stn.stns[1].warp_head, -0.1, 1.1, -0.05, 0.02)
    first = similarity_matrices(stn.stns[0].warp_head.linear.bias.detach().view(4, 1).T)
    second = similarity_matrices(stn.stns[1].warp_head.linear.bias.detach().view(4, 1).T)
    composed = first @ torch.cat([second, torch.tensor([[[0.0, 0.0, 1.0]]])], dim=1)
    original = blobs(2, 32)
    moved = warped_by_inverse(original, composed)
    with torch.no_grad():
        restored, grid = stn(moved, return_warp=True)
        assert torch.allclose(stn.similarity(moved), composed.expand(2, 2, 3), atol=1e-6)
    expected_grid = F.affine_grid(composed.expand(2, 2, 3), (2, 3, 32, 32), align_corners=False)
    assert torch.allclose(grid, expected_grid, atol=1e-5)  # the flow stage starts at the identity
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    assert (restored - original)[inner].abs().mean() < 0.02
    template_pixels = torch.tensor([[[8.0, 9.0], [20.0, 14.0], [15.0, 23.0]]]).repeat(2, 1, 1)
    template = normalize_points(template_pixels, 32, 32)
    image_points = unnormalize_points(
        torch.einsum('ij,npj->npi', composed[0, :, :2], template) + composed[0, :, 2], 32, 32)
    with torch.no_grad():
        assert (stn.uncongeal_points(moved, template) - image_points).norm(dim=-1).max() < 1.0
        assert (stn.congeal_points(moved, image_points) - template_pixels).norm(dim=-1).max() < 1.0


def test_iterations_compose_the_similarity():
    stn = small_stn('similarity', flow_size=16, supersize=16)
    set_similarity(stn.warp_head, 0.2, 0.9, 0.05, 0.0)
    images = blobs(1, 16)
    with torch.no_grad():
        _, once = stn(images, return_flow=True)
        _, twice = stn(images, iters=2, return_flow=True)
        frames, grids = stn(images, iters=3, return_intermediates=True)
    expected = once @ torch.cat([once, torch.tensor([[[0.0, 0.0, 1.0]]])], dim=1)
    assert torch.allclose(twice, expected, atol=1e-6)
    assert len(frames) == len(grids) == 3


def test_alpha_blends_toward_the_identity():
    stn = small_stn(['similarity', 'flow'])
    randomize_heads(stn)
    images = blobs(2, 32)
    with torch.no_grad():
        _, grid = stn(images, return_warp=True)
        _, none = stn(images, return_warp=True, alpha=0.0)
        _, half = stn(images, return_warp=True, alpha=torch.tensor([0.5, 0.5]))
    identity = identity_grid(16, batch=2)
    assert torch.allclose(none, identity, atol=1e-6)
    assert torch.allclose(half, (identity + grid) / 2, atol=1e-5)


# ----- padding -----

@pytest.mark.parametrize('mode', ['border', 'zeros', 'reflection'])
def test_padding_modes_when_the_warp_leaves_the_image(mode):
    stn = small_stn('similarity', flow_size=16, supersize=16)
    set_similarity(stn.warp_head, 0.0, 1.0, 0.5, 0.0)  # read a quarter image to the right
    images = torch.rand(1, 3, 16, 16) + 0.5
    with torch.no_grad():
        out, matrix = stn(images, padding_mode=mode, return_flow=True)
    grid = F.affine_grid(matrix, (1, 3, 16, 16), align_corners=False)
    assert torch.allclose(out, F.grid_sample(images, grid, padding_mode=mode, align_corners=False),
                          atol=1e-6)
    outside = out[..., -2:]
    if mode == 'zeros':
        assert outside.abs().max() < 1e-6
    elif mode == 'border':
        assert torch.allclose(outside, images[..., -1:].expand_as(outside), atol=1e-6)
    else:
        assert torch.allclose(outside, images[..., -4:-2].flip(-1), atol=1e-5)


# ----- keypoint transfer -----

def test_transfer_points_round_trip():
    stn = small_stn(['similarity', 'flow'], flow_size=32, supersize=32)
    randomize_heads(stn, flow_scale=0.5, similarity_scale=0.08, biases=False)
    image_a, image_b = blobs(3, 32, seed=1), blobs(3, 32, seed=2)
    points = torch.tensor([[10.0, 12.0], [16.0, 16.0], [21.0, 18.0], [14.0, 22.0]]).repeat(3, 1, 1)
    with torch.no_grad():
        _, grid_a, flow = stn(image_a, return_warp=True, return_flow=True)
        _, grid_b = stn(image_b, return_warp=True)
        to_b = stn.transfer_points(image_a, image_b, points)
        back = stn.transfer_points(image_b, image_a, to_b)
    assert flow.abs().mean() > 0.02  # a real residual flow (about a pixel)
    assert (grid_a - grid_b).abs().mean() * 16 > 1  # A and B are warped differently (pixels)
    assert (to_b - points).norm(dim=-1).mean() > 1  # so the points moved
    # Nearest-neighbour inversion on the 32 x 32 grid costs up to ~0.7 px per pass.
    assert (back - points).norm(dim=-1).max() < 1.5
    assert (back - points).norm(dim=-1).mean() < 0.75


# ----- mirrors -----

def test_flip_selection_picks_the_mirror_of_a_mirrored_input():
    stn = small_stn(['similarity', 'flow'])
    randomize_heads(stn, flow_scale=0.1)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out, warp, flags = stn.forward_with_flip(images, return_warp=True,
                                                 return_flip_indices=True)
        out_m, _, flags_m = stn.forward_with_flip(images.flip(3), return_warp=True,
                                                  return_flip_indices=True)
    assert flags.shape == (4, 1, 1, 1) and flags.dtype == torch.bool
    assert torch.equal(flags, ~flags_m)
    assert torch.allclose(out, out_m, atol=1e-5)
    # The returned warp samples the unmirrored input.
    assert torch.allclose(MipmapWarp()(images, warp), out, atol=1e-5)


def test_flip_needs_a_flow_stage():
    with pytest.raises(UserError, match='residual flows'):
        small_stn('similarity').forward_with_flip(torch.randn(1, 3, 32, 32))


def test_match_flows_mirrors_images_and_keypoints():
    stn = small_stn(['similarity', 'flow'])
    randomize_heads(stn, flow_scale=0.1)
    image_a, image_b = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    points_a = torch.tensor([[[2.0, 5.0, 1.0], [30.0, 6.0, 0.0]]]).repeat(3, 1, 1)
    points_b = points_a.clone()
    permutation = [1, 0]
    with torch.no_grad():
        a, b, pa, pb, pick = stn.match_flows(image_a, image_b, points_a, points_b, permutation)
        a2, b2, pa2, pick2 = stn.match_flows(image_a.flip(3), image_b, points_a)
    mirror_a, mirror_b = (pick % 2 == 1).flatten(), (pick >= 2).flatten()
    for i in range(3):
        assert torch.equal(a[i], image_a[i].flip(2) if mirror_a[i] else image_a[i])
        assert torch.equal(b[i], image_b[i].flip(2) if mirror_b[i] else image_b[i])
        expected_a = torch.tensor([[1.0, 6.0, 0.0], [29.0, 5.0, 1.0]]) if mirror_a[i] else points_a[i]
        expected_b = torch.tensor([[1.0, 6.0, 0.0], [29.0, 5.0, 1.0]]) if mirror_b[i] else points_b[i]
        assert torch.equal(pa[i], expected_a) and torch.equal(pb[i], expected_b)
    # Mirroring A beforehand flips the decision about A only.
    assert torch.equal(pick2 % 2, 1 - pick % 2) and torch.equal(pick2 >= 2, pick >= 2)
    assert torch.equal(a2, a)


# ----- cluster heads -----

def test_cluster_head_shapes_under_each_policy():
    stn = small_stn(['similarity', 'flow'], num_heads=3)
    randomize_heads(stn)
    images = blobs(2, 32)
    with torch.no_grad():
        out, grid, flow = stn(images, return_warp=True, return_flow=True)
        assert out.shape == (6, 3, 16, 16) and grid.shape == (6, 16, 16, 2)
        assert flow.shape == (6, 16, 16, 2)
        unfolded = stn(images, return_warp=True, return_flow=True, unfold=True)
        assert [tuple(t.shape) for t in unfolded] == [(2, 3, 3, 16, 16), (2, 3, 16, 16, 2),
                                                        (2, 3, 16, 16, 2)]
        assert torch.allclose(unfolded[0].reshape(6, 3, 16, 16), out)
        chosen = torch.tensor([2, 0])
        by_index = stn(images, warp_policy=chosen)
        by_scores = stn(images, warp_policy=F.one_hot(chosen + 3, 6).float())  # mirrored slots
        assert by_index.shape == (2, 3, 16, 16)
        # Row n * K + k of the cartesian output is image n warped by head k.
        assert torch.allclose(by_index, out[[2, 3]], atol=1e-5)
        assert torch.allclose(by_scores, by_index)
        iterated = stn(images, iters=2, unfold=True)
        assert iterated.shape == (2, 3, 3, 16, 16)
        points = stn.transfer_points(images, images.flip(0), torch.rand(2, 4, 2) * 31,
                                     warp_policy=chosen)
        assert points.shape == (2, 4, 2)
        with pytest.raises(UserError, match='head indices'):
            stn(images, warp_policy=torch.tensor([0, 3]))
        with pytest.raises(UserError, match='per-image'):
            stn.match_flows(images, images, torch.zeros(2, 1, 2))


def test_gradients_reach_every_head_and_the_trunk():
    stn = small_stn(['similarity', 'flow'], num_heads=2)
    images = blobs(2, 32)
    # At initialisation the zero-initialised last layers still receive gradients.
    out, flow = stn(images, return_flow=True)
    (out.square().sum() + flow.square().sum()).backward()
    for stage in stn.stns:
        last = stage.warp_head.linear if not stage.is_flow else stage.warp_head.flow_out[-1]
        assert last.weight.grad.abs().sum() > 0
    stn.zero_grad()
    randomize_heads(stn)
    out, flow = stn(images, return_flow=True)
    (out.square().sum() + flow.square().sum()).backward()
    for name, param in stn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    similarity, flow_head = stn.stns[0].warp_head, stn.stns[1].warp_head
    for k in range(2):
        assert similarity.linear.weight.grad.view(4, 2, -1)[:, k].abs().sum() > 0
        assert flow_head.flow_out[-1].weight.grad.view(2, 2, -1)[k].abs().sum() > 0
        assert flow_head.mask_out[-1].weight.grad.view(2, -1)[k].abs().sum() > 0


def test_stop_grad_blocks_the_warp_but_keeps_parameters_in_the_graph():
    stn = small_stn('similarity')
    randomize_heads(stn)
    out = stn(blobs(1, 32), stop_grad=True)
    out.sum().backward()
    assert stn.warp_head.linear.weight.grad is not None
    assert stn.warp_head.linear.weight.grad.abs().sum() == 0


def test_out_of_bounds_flags():
    stn = small_stn('similarity')
    images = blobs(2, 32)
    with torch.no_grad():
        _, inside = stn(images, return_out_of_bounds=True)
        set_similarity(stn.warp_head, 0.0, 1.5, 0.0, 0.0)  # zoomed out: reads past the edges
        _, outside = stn(images, return_out_of_bounds=True)
    assert inside.tolist() == [False, False] and outside.tolist() == [True, True]
