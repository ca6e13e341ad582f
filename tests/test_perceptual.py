import argparse
import os
import warnings

import pytest
import torch

import models.perceptual.lpips as lpips_loss
import models.perceptual.vgg_ssl as vgg_ssl_loss
from models.perceptual import PERCEPTUAL_LOSSES
from models.perceptual._vgg import TAPPED_RELUS, VGGFeatureDistance, _vgg16_trunk
from models.perceptual.laplacian import LaplacianPyramidDistance, laplacian_pyramid
from utils.errors import UserError

CLOSED_PORT_URL = 'http://127.0.0.1:9/{}'  # the discard port: nothing listens there


@pytest.fixture(scope='module')
def fake_trunk():
    torch.manual_seed(0)
    return _vgg16_trunk()


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    hub_checkpoints = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    return hub_checkpoints


def options(**kwargs):
    return argparse.Namespace(**{'perceptual_weights': None, **kwargs})


def image_pair(n=2, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    b = torch.rand(n, 3, size, size, generator=generator) * 2 - 1
    return a, b


def save_torchvision_style(trunk, path):
    """A torchvision VGG16 checkpoint layout: 'features.N.*' plus classifier keys."""
    os.makedirs(path.parent, exist_ok=True)
    state = {f'features.{k}': v for k, v in trunk.state_dict().items()}
    state['classifier.6.bias'] = torch.zeros(10)
    torch.save(state, path)


def save_features_only(trunk, path):
    """The SimCLR release layout: a bare features state dict ('N.*')."""
    os.makedirs(path.parent, exist_ok=True)
    torch.save(trunk.state_dict(), path)


def check_distance_behaviour(loss, size=32):
    a, b = image_pair(size=size)
    same = loss(a, a.clone())
    assert same.shape == (2,)
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)
    a.requires_grad_(True)
    different = loss(a, b)
    assert different.shape == (2,) and (different > 0).all()
    different.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_registry_lists_all_losses_and_weights_flag_is_added_once():
    assert {'lpips', 'vgg_ssl', 'laplacian', 'l2'} <= set(PERCEPTUAL_LOSSES.names())
    parser = argparse.ArgumentParser()
    for name in ('lpips', 'vgg_ssl', 'laplacian', 'l2'):
        PERCEPTUAL_LOSSES.get(name).modify_commandline_options(parser, True)
    opt = parser.parse_args(['--perceptual_weights', 'w.pt', '--laplacian_levels', '3'])
    assert opt.perceptual_weights == 'w.pt' and opt.laplacian_levels == 3


@pytest.mark.parametrize('module,filename,url_attr', [
    (lpips_loss, 'vgg16-397923af.pth', 'VGG16_URL'),
    (vgg_ssl_loss, 'simclr_vgg_phase150.pt', 'SSL_VGG_URL'),
])
def test_offline_without_weights_gives_a_clear_user_error(module, filename, url_attr, empty_hub, monkeypatch):
    monkeypatch.setattr(module, url_attr, CLOSED_PORT_URL.format(filename))
    name = 'lpips' if module is lpips_loss else 'vgg_ssl'
    with pytest.raises(UserError) as caught:
        PERCEPTUAL_LOSSES.get(name).build(options())
    assert filename in str(caught.value)
    assert not (empty_hub / filename).exists()  # nothing half-written left looking complete


def test_explicit_missing_path_is_a_user_error(empty_hub):
    with pytest.raises(UserError, match='no_such_vgg.pth'):
        PERCEPTUAL_LOSSES.get('vgg_ssl').build(options(perceptual_weights='no_such_vgg.pth'))


def test_lpips_from_hub_cache_behaves_like_a_distance(fake_trunk, empty_hub):
    save_torchvision_style(fake_trunk, empty_hub / 'vgg16-397923af.pth')
    loss = PERCEPTUAL_LOSSES.get('lpips').build(options())
    check_distance_behaviour(loss)


def test_lpips_matches_the_reference_package(fake_trunk, empty_hub):
    lpips = pytest.importorskip('lpips')
    save_torchvision_style(fake_trunk, empty_hub / 'vgg16-397923af.pth')
    ours = PERCEPTUAL_LOSSES.get('lpips').build(options())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        reference = lpips.LPIPS(net='vgg', pnet_rand=True, verbose=False).eval()
    # Put the same trunk into the reference network (its slices keep torchvision's layer numbers).
    bounds = [0] + [r + 1 for r in TAPPED_RELUS]
    mapped = {}
    for key, value in fake_trunk.state_dict().items():
        layer = int(key.split('.')[0])
        slice_index = next(i for i in range(5) if bounds[i] <= layer < bounds[i + 1]) + 1
        mapped[f'slice{slice_index}.{key}'] = value
    reference.net.load_state_dict(mapped)
    a, b = image_pair(size=32, seed=3)
    with torch.no_grad():
        assert torch.allclose(ours(a, b), reference(a, b).flatten(), rtol=1e-4, atol=1e-6)


def test_vgg_ssl_from_explicit_path_is_the_unweighted_distance_over_18(fake_trunk, tmp_path, empty_hub):
    path = tmp_path / 'simclr_vgg_phase150.pt'
    save_features_only(fake_trunk, path)
    loss = PERCEPTUAL_LOSSES.get('vgg_ssl').build(options(perceptual_weights=str(path)))
    check_distance_behaviour(loss)
    a, b = image_pair(seed=1)
    with torch.no_grad():
        unweighted = VGGFeatureDistance(fake_trunk)(a, b)
        assert torch.allclose(loss(a, b), unweighted / 18.0, rtol=1e-5)


def test_corrupt_weights_file_is_a_user_error(tmp_path, empty_hub):
    path = tmp_path / 'broken.pt'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='broken.pt'):
        PERCEPTUAL_LOSSES.get('vgg_ssl').build(options(perceptual_weights=str(path)))
    torch.save({'0.weight': torch.zeros(2)}, path)
    with pytest.raises(UserError, match='not a VGG16'):
        PERCEPTUAL_LOSSES.get('vgg_ssl').build(options(perceptual_weights=str(path)))


def test_laplacian_behaves_like_a_distance():
    loss = PERCEPTUAL_LOSSES.get('laplacian').build(argparse.Namespace(laplacian_levels=4))
    check_distance_behaviour(loss, size=64)


def test_laplacian_of_a_constant_offset_is_the_weighted_residual():
    # A constant difference has no band-pass content: only the low-pass level (weight 4 of 1 + 2 + 4) sees it.
    a = torch.zeros(1, 3, 32, 32)
    loss = LaplacianPyramidDistance(levels=3)
    assert loss(a + 0.3, a).item() == pytest.approx(4 / 7 * 0.3, rel=1e-5)


def test_laplacian_pyramid_reconstructs_and_stops_at_small_sizes():
    images = torch.randn(2, 3, 32, 32)
    pyramid = laplacian_pyramid(images, 4)
    assert [level.shape[-1] for level in pyramid] == [32, 16, 8, 4]
    assert [level.shape[-1] for level in laplacian_pyramid(torch.randn(1, 3, 8, 8), 5)] == [8, 4]
    # Collapsing the pyramid (upsample and add, coarse to fine) gives the image back.
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + torch.nn.functional.interpolate(rebuilt, size=band.shape[-2:], mode='bilinear',
                                                         align_corners=False)
    assert torch.allclose(rebuilt, images, atol=1e-5)


def test_laplacian_rejects_bad_levels():
    with pytest.raises(UserError, match='--laplacian_levels'):
        PERCEPTUAL_LOSSES.get('laplacian').build(argparse.Namespace(laplacian_levels=0))


def test_l2_is_the_per_sample_mean_square():
    loss = PERCEPTUAL_LOSSES.get('l2').build(options())
    a, b = image_pair(size=8)
    assert torch.allclose(loss(a, b), (a - b).pow(2).mean((1, 2, 3)))
    check_distance_behaviour(loss, size=8)
