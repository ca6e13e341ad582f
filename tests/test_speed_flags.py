"""Speed flags keep the numbers: each against float32 / eager on tiny shapes."""
import pytest
import torch

from training.building import build_models
from training.step import training_step
from utils.distributed import seed_everything
from options import parse_training_options
from utils.precision import at_least_float32, autocast, full_precision, resolve_precision


def first_losses(argv, steps=3):
    """Loss terms of the first ``steps`` training iterations (same seed, Adam on the STN and target), through
    the modules ``step_modules`` gives (the plain ones without --compile).

    Returns (history (steps, terms), the STN, the (generator, STN, loss) modules the steps ran)."""
    from models.perceptual import PERCEPTUAL_LOSSES
    from training.step import step_modules
    opt = parse_training_options(argv, save=False)
    seed_everything(opt.seed)
    generator, stn, _, ll = build_models(opt, torch.device('cpu'))
    ll.assign_pca((torch.randn(1, opt.dim_latent), torch.randn(1, opt.dim_latent)))
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt)
    modules = step_modules(opt, generator, stn, loss_fn)
    optimiser = torch.optim.Adam(list(stn.parameters()) + list(ll.parameters()), lr=1e-3)
    stn.train()
    history = []
    for _ in range(steps):
        terms = training_step(opt, *modules[:2], ll, modules[2], psi=0.0)
        assert all(term.dtype == torch.float32 for term in terms)
        optimiser.zero_grad()
        terms.total.backward()
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in stn.parameters())
        optimiser.step()
        history.append(torch.stack([t.detach() for t in terms]))
    return torch.stack(history), stn, modules


def test_bf16_training_step_matches_fp32(tiny_configs, one_thread):
    argv = tiny_configs.stylegan2 + ['--exp-name', 'p']
    fp32, stn32, _ = first_losses(argv + ['--precision', 'fp32'])
    bf16, stn16, _ = first_losses(argv + ['--precision', 'bf16'])
    assert torch.isfinite(bf16).all()
    # bfloat16 keeps 8 bits of mantissa: the losses agree to a few per cent, step after step.
    assert torch.allclose(bf16[:, :2], fp32[:, :2], rtol=0.05, atol=1e-4), (bf16, fp32)
    # The weights stay float32 and move alike (Adam moves each by at most ~lr per step: 3 steps of 1e-3).
    for p32, p16 in zip(stn32.parameters(), stn16.parameters()):
        assert p16.dtype == torch.float32
        assert torch.allclose(p16, p32, atol=7e-3)
    # And bf16 really ran: the results are not bit-identical.
    assert not torch.equal(bf16, fp32)


def test_auto_precision_is_the_measured_choice_per_device(monkeypatch):
    import utils.precision as precision
    monkeypatch.setattr(precision, 'cpu_has_native_bf16', lambda: True)
    assert resolve_precision('auto', 'cpu') == 'bf16'
    monkeypatch.setattr(precision, 'cpu_has_native_bf16', lambda: False)
    assert resolve_precision('auto', 'cpu') == 'fp32'  # emulated bfloat16 is slower than float32
    assert resolve_precision('auto', torch.device('cuda')) == 'fp32'  # not measured on a GPU yet
    assert resolve_precision('bf16', 'cpu') == 'bf16'
    with pytest.raises(ValueError):
        resolve_precision('fp8', 'cpu')
    with autocast('bf16', 'cpu'):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        with autocast('fp32', 'cpu'):  # fp32 leaves an enclosing autocast on
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        with full_precision('cpu'):
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    with autocast('fp32', 'cpu'):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    assert at_least_float32(torch.ones(1, dtype=torch.bfloat16)).dtype == torch.float32
    assert at_least_float32(torch.ones(1, dtype=torch.float64)).dtype == torch.float64
    assert at_least_float32(torch.ones(1, dtype=torch.long)).dtype == torch.long


def _transformer_with_moving_heads(transforms=('similarity', 'flow')):
    from models import get_stn
    torch.manual_seed(0)
    stn = get_stn(list(transforms), flow_size=16, supersize=32, channel_multiplier=0.125, max_channels=32)
    with torch.no_grad():
        for name, p in stn.named_parameters():
            if 'warp_head' in name and not p.abs().sum():  # the zero-initialised last layers
                p.normal_(0, 0.02)
    return stn.eval()


def test_bf16_trunk_keeps_the_warp_float32_and_close_to_fp32():
    stn = _transformer_with_moving_heads()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out32, grid32, flow32 = stn(images, return_warp=True, return_flow=True)
        stn.set_precision('bf16')
        out16, grid16, flow16 = stn(images, return_warp=True, return_flow=True)
        # An enclosing autocast (the training step's) gives the same as the trunk's own setting.
        with autocast('bf16', 'cpu'):
            enclosed = stn.set_precision('fp32')(images, return_warp=True)[1]
    assert out16.dtype == grid16.dtype == flow16.dtype == enclosed.dtype == torch.float32
    assert torch.equal(enclosed, grid16)
    assert not torch.equal(grid16, grid32)  # the trunk really ran in bfloat16
    # Trunk features rounded to 8 bits of mantissa move the warp by a small fraction of a pixel.
    assert (grid16 - grid32).abs().max() * 16 < 0.05
    assert (out16 - out32).abs().max() < 0.05
    with pytest.raises(ValueError):
        stn.set_precision('fp8')


def test_applications_run_the_trunk_at_the_precision_flag(tiny_configs, tmp_path):
    from applications.common.models import load_stn
    from options import base_eval_argparse, parse_eval_options
    ckpt = tmp_path / 'model.pt'
    stn = _transformer_with_moving_heads(['similarity'])
    torch.save({'t_ema': stn.state_dict(), 'args': None}, ckpt)
    for flag, expected in (('fp32', 'fp32'), ('bf16', 'bf16'), ('auto', 'auto')):
        parser = base_eval_argparse()
        opt = parse_eval_options(parser, ['--ckpt', str(ckpt), '--real_size', '32', '--flow_size', '16',
                                          '--transform', 'similarity', '--stn_channel_multiplier', '0.125',
                                          '--precision', flag])
        t = load_stn(opt, torch.device('cpu'))
        assert {m.trunk_precision for m in t.modules() if hasattr(m, 'trunk_precision')} == {expected}


def test_precision_flag_is_parsed_and_refuses_unknown_values(tiny_configs, capsys):
    argv = tiny_configs.stylegan2 + ['--exp-name', 'p']
    assert parse_training_options(argv, save=False).precision == 'auto'
    assert parse_training_options(argv + ['--precision', 'bf16'], save=False).precision == 'bf16'
    with pytest.raises(SystemExit) as exit_info:
        parse_training_options(argv + ['--precision', 'fp8'], save=False)
    assert exit_info.value.code == 2
    assert '--precision' in capsys.readouterr().err


def test_official_loader_refuses_a_folder_that_is_not_the_original(tmp_path):
    import sys
    from benchmarks.official import load_official, write_random_vgg16
    import models
    with pytest.raises(SystemExit) as exit_info:
        load_official(str(tmp_path))
    assert str(exit_info.value).startswith('error:') and 'networks.py' in str(exit_info.value)
    assert sys.modules['models'] is models  # our packages stay in place
    # The random VGG16 file both implementations read loads into our trunk.
    from models.perceptual._vgg import load_vgg16_trunk
    trunk = load_vgg16_trunk(write_random_vgg16(str(tmp_path / 'vgg.pt')))
    assert trunk[0].weight.shape == (64, 3, 3, 3)
