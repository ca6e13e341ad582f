"""train_stylegan2.py on tiny configurations: losses, EMA, checkpoints, resume, the hand-off to train.py, bad input."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import train_stylegan2
from models.discriminator import Discriminator, minibatch_stddev
from models.gan_losses import d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty
from models.stylegan2 import Generator
from datasets.lmdb_dataset import write_lmdb_dataset
from tests.conftest import REPO, subprocess_env
from utils.checkpoint import load_checkpoint
from utils.diff_augment import AdaptiveAugment, augment
from synthetic_world import render_dataset

pytestmark = pytest.mark.usefixtures('one_thread')

ROSINALITY_KEYS = {'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args', 'ada_aug_p'}


def tiny_flags(data, results, name='tiny', iters=4, extra=()):
    return ['--exp-name', name, '--results', str(results), '--real_data_path', str(data), '--size', '16',
            '--latent', '16', '--n_mlp', '2', '--channel_max', '8', '--batch', '4', '--iter', str(iters),
            '--n_sample', '4', '--vis_every', '2', '--ckpt_every', '2', '--log_every', '1', '--d_reg_every', '2',
            '--g_reg_every', '2', '--num_workers', '0', '--device', 'cpu'] + list(extra)


@pytest.fixture(scope='module')
def world_lmdb(tmp_path_factory):
    """24 synthetic faces at 8 and 16 px."""
    folder = tmp_path_factory.mktemp('world') / 'lmdb'
    write_lmdb_dataset(str(folder), {size: render_dataset(24, size, seed=3)[0] for size in (8, 16)})
    return folder


@pytest.fixture(scope='module')
def finished_run(world_lmdb, tmp_path_factory):
    results = tmp_path_factory.mktemp('results')
    train_stylegan2.main(tiny_flags(world_lmdb, results))
    return results / 'tiny'


def test_run_writes_rosinality_checkpoints_with_finite_losses_and_moving_ema(finished_run):
    ckpts = sorted(os.listdir(finished_run / 'checkpoints'))
    assert ckpts == ['0000002.pt', '0000004.pt']
    first = load_checkpoint(str(finished_run / 'checkpoints' / '0000002.pt'))
    last = load_checkpoint(str(finished_run / 'checkpoints' / '0000004.pt'))
    assert ROSINALITY_KEYS <= set(last) and last['iteration'] == 4
    assert last['args'].size == 16 and last['args'].latent == 16
    # The generator and its EMA moved, the EMA by a small step towards the generator.
    name = 'style.1.weight'
    assert not torch.equal(first['g'][name], last['g'][name])
    assert not torch.equal(first['g_ema'][name], last['g_ema'][name])
    ema_step = (last['g_ema'][name] - first['g_ema'][name]).abs().max()
    g_step = (last['g'][name] - first['g'][name]).abs().max()
    assert 0 < ema_step < g_step
    for state in (last['g'], last['d'], last['g_ema']):
        assert all(torch.isfinite(v).all() for v in state.values())
    assert torch.isfinite(last['mean_path_length']) and last['mean_path_length'] > 0
    # Weights load back into freshly built modules of the same architecture.
    g = Generator(16, 16, 2, channel_max=8)
    g.load_state_dict(last['g_ema'])
    Discriminator(16, channel_max=8).load_state_dict(last['d'])
    images, _ = g([torch.randn(3, 16)])
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()
    assert (finished_run / 'sample_0000004.png').exists()
    with Image.open(finished_run / 'sample_0000004.png') as grid:
        assert grid.size[0] > 32


def test_losses_on_the_tensorboard_log_are_finite(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(finished_run))
    events.Reload()
    for tag in ('Loss/d', 'Loss/g', 'Loss/r1', 'Loss/path', 'Progress/augment_p'):
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 4 and all(np.isfinite(values))
    assert [e.value for e in events.Scalars('Loss/r1')][1] > 0  # R1 ran at iteration 2


def test_checkpoint_loads_into_gangealing_train_with_load_G_only(finished_run, world_lmdb, tmp_path, monkeypatch):
    import train
    ckpt = str(finished_run / 'checkpoints' / '0000004.pt')
    argv = ['--exp-name', 'align', '--results', str(tmp_path), '--ckpt', ckpt, '--load_G_only',
            '--generator', 'stylegan2', '--device', 'cpu', '--gen_size', '16', '--real_size', '16',
            '--dim_latent', '16', '--n_mlp', '2', '--gen_channel_max', '8', '--inject', '2', '--loss_fn', 'l2',
            '--dataset_mode', 'lmdb', '--real_data_path', str(world_lmdb), '--flow_size', '16',
            '--stn_channel_multiplier', '0.125', '--stn_max_channels', '16', '--batch', '2', '--iter', '2',
            '--n_pca', '200', '--n_mean', '4', '--n_sample', '4', '--vis_batch_size', '4', '--num_workers', '0',
            '--vis_every', '2', '--ckpt_every', '2']
    monkeypatch.setattr('sys.argv', ['train.py'] + argv)
    train.main()
    saved = load_checkpoint(str(tmp_path / 'align' / 'checkpoints' / '0000002.pt'))
    expected = load_checkpoint(ckpt)['g_ema']
    assert all(torch.equal(saved['g_ema'][k], expected[k]) for k in expected)


def test_resume_reproduces_the_next_iterations(world_lmdb, tmp_path):
    flags = lambda name, iters, extra=(): tiny_flags(world_lmdb, tmp_path, name, iters, extra)  # noqa: E731
    train_stylegan2.main(flags('straight', 4, ['--augment', '--augment_p', '0.5', '--ckpt_every', '4']))
    train_stylegan2.main(flags('split', 2, ['--augment', '--augment_p', '0.5', '--ckpt_every', '4']))
    train_stylegan2.main(flags('split', 4, ['--resume']))  # architecture and augmentation come from the checkpoint
    a = load_checkpoint(str(tmp_path / 'straight' / 'checkpoints' / '0000004.pt'))
    b = load_checkpoint(str(tmp_path / 'split' / 'checkpoints' / '0000004.pt'))
    assert b['args'].augment and b['args'].augment_p == 0.5
    for key in ('g', 'd', 'g_ema'):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=0, atol=1e-6, msg=f'{key}.{name}')
    assert float(a['mean_path_length']) == pytest.approx(float(b['mean_path_length']), abs=1e-6)


def _error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        train_stylegan2.main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert 'Traceback' not in '\n'.join(err)
    return err[-1]


def test_bad_input_is_one_error_line(world_lmdb, tmp_path, capsys, finished_run):
    line = _error_line(capsys, tiny_flags(world_lmdb, tmp_path, 'no32') + ['--size', '32'])
    assert line.startswith('error:') and 'lacks' in line or 'resolution 32' in line
    assert not os.path.exists(tmp_path / 'no32')  # nothing written

    line = _error_line(capsys, tiny_flags(world_lmdb, tmp_path, 'odd') + ['--size', '24'])
    assert 'power of two' in line

    line = _error_line(capsys, tiny_flags(world_lmdb, tmp_path, 'unused') + ['--ada_target', '0.5'])
    assert '--augment' in line

    folder = tmp_path / 'small_images'
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(folder / f'{i}.png')
    line = _error_line(capsys, tiny_flags(folder, tmp_path, 'small'))
    assert line.startswith('error:') and 'smaller than --size 16' in line
    assert not os.path.exists(tmp_path / 'small')

    # A checkpoint of another architecture (narrower) is refused, naming the flags.
    ckpt = str(finished_run / 'checkpoints' / '0000004.pt')
    line = _error_line(capsys, tiny_flags(world_lmdb, tmp_path, 'other') + ['--ckpt', ckpt, '--channel_max', '16'])
    assert line.startswith('error:') and 'another architecture' in line and '--channel_max' in line
    assert not os.path.exists(tmp_path / 'other')


def test_discriminator_and_losses():
    d = Discriminator(16, channel_max=8)
    keys = set(d.state_dict())
    # rosinality's layout: from-RGB, residual blocks, final conv and linear layers.
    assert {'convs.0.0.weight', 'convs.0.1.bias', 'convs.1.conv1.0.weight', 'convs.1.conv2.0.kernel',
            'convs.1.conv2.1.weight', 'convs.1.skip.1.weight', 'final_conv.0.weight', 'final_linear.0.weight',
            'final_linear.1.bias'} <= keys
    assert d(torch.randn(6, 3, 16, 16)).shape == (6, 1)  # a batch not divisible by 4
    x = torch.arange(8.).view(8, 1, 1, 1).expand(8, 2, 2, 2)
    # Groups are samples {0, 2, 4, 6} and {1, 3, 5, 7}: std of (0, 2, 4, 6) is sqrt(5).
    assert torch.allclose(minibatch_stddev(x)[:, 2], torch.full((8, 2, 2), 5 ** 0.5), atol=1e-4)

    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.0]])
    log1p = lambda v: float(torch.nn.functional.softplus(torch.tensor(v)))  # noqa: E731
    assert float(d_logistic_loss(real, fake)) == pytest.approx((log1p(-2.) + log1p(1.)) / 2 + log1p(0.))
    assert float(g_nonsaturating_loss(fake)) == pytest.approx(log1p(0.))

    images = torch.randn(3, 3, 4, 4, requires_grad=True)
    logits = (images * 2).sum(dim=(1, 2, 3)).unsqueeze(1)  # gradient 2 everywhere
    assert float(r1_penalty(logits, images)) == pytest.approx(4 * 48)

    latents = torch.randn(2, 3, 5, requires_grad=True)
    out = latents.pow(2).sum(1).view(2, 5, 1, 1).expand(2, 5, 2, 2)[:, :3]
    penalty, mean, lengths = path_length_penalty(out, latents, torch.zeros(()))
    assert lengths.shape == (2,) and float(mean) == pytest.approx(0.01 * float(lengths.mean()), rel=1e-5)
    assert penalty.requires_grad and torch.isfinite(penalty)


def test_augmentation_and_adaptive_probability():
    images = torch.rand(64, 3, 8, 8) * 2 - 1
    assert torch.equal(augment(images, 0.0), images)
    out = augment(images, 1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.allclose(out, images)
    images.requires_grad_(True)
    augment(images, 0.5).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()

    ada = AdaptiveAugment(target=0.6, length=100, every=2)
    ada.update(torch.ones(10, 1))
    assert ada.p == 0  # adjusted only every 2 updates
    assert ada.update(torch.ones(10, 1)) == pytest.approx(0.2)  # 20 images seen, overfitting: up
    ada.update(-torch.ones(10, 1))
    assert ada.update(-torch.ones(10, 1)) == pytest.approx(0.0)


def _command(argv, torchrun=False):
    launcher = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'] if torchrun else []
    return [sys.executable, *launcher, 'train_stylegan2.py', *map(str, argv)]


def test_torchrun_two_cpu_processes(world_lmdb, tmp_path):
    proc = subprocess.run(_command(tiny_flags(world_lmdb, tmp_path, 'ddp', 4, ['--augment']), torchrun=True),
                          cwd=REPO, env=subprocess_env(), text=True, capture_output=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('----------------- Options') == 1  # rank 0 alone prints and writes
    assert len([n for n in os.listdir(tmp_path / 'ddp') if n.startswith('events.out')]) == 1
    ckpt = load_checkpoint(str(tmp_path / 'ddp' / 'checkpoints' / '0000004.pt'))
    assert len(ckpt['rank_rng_states']) == 2
    assert all(torch.isfinite(v).all() for v in ckpt['g'].values())


def test_sigterm_writes_the_current_iteration_and_exits(world_lmdb, tmp_path):
    argv = tiny_flags(world_lmdb, tmp_path, 'stopped', 100000, ['--ckpt_every', '100000', '--vis_every', '100000'])
    proc = subprocess.Popen(_command(argv), cwd=REPO, env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    folder = tmp_path / 'stopped'
    while time.time() < deadline and not (folder / 'opt.json').exists():
        time.sleep(0.5)
    time.sleep(4)  # into the iterations
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    saved = os.listdir(folder / 'checkpoints')
    assert len(saved) == 1 and 'Traceback' not in err
    ckpt = load_checkpoint(str(folder / 'checkpoints' / saved[0]))
    assert ckpt['iteration'] == int(saved[0][:-3]) > 0
    assert f"checkpoint saved in {folder / 'checkpoints'}" in out


def test_export_keeps_g_ema_in_half_precision(finished_run, tmp_path, capsys):
    from applications import export_generator
    from training.state import load_generator_weights
    source = str(finished_run / 'checkpoints' / '0000004.pt')
    out = tmp_path / 'g.pt'
    export_generator.main(['--ckpt', source, '--out', str(out)])
    exported, full = load_checkpoint(str(out)), load_checkpoint(source)
    assert set(exported) == {'g_ema', 'args', 'iteration'} and exported['iteration'] == 4
    assert exported['g_ema']['style.1.weight'].dtype == torch.float16
    assert exported['args'].real_data_path is None and exported['args'].results is None
    assert exported['args'].size == 16
    g = Generator(16, 16, 2, channel_max=8)
    load_generator_weights(g, exported, str(out))  # what train.py --ckpt does
    torch.testing.assert_close(g.state_dict()['style.1.weight'], full['g_ema']['style.1.weight'],
                               rtol=1e-3, atol=1e-3)
    assert os.path.getsize(out) < os.path.getsize(source) / 3


def test_a_folder_of_images_larger_than_size_trains(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    train_stylegan2.main(tiny_flags(folder, tmp_path, 'folder', 2))
    ckpt = load_checkpoint(str(tmp_path / 'folder' / 'checkpoints' / '0000002.pt'))
    assert ckpt['iteration'] == 2 and all(torch.isfinite(v).all() for v in ckpt['d'].values())


SHIPPED = [os.path.join(REPO, 'pretrained', name) for name in ('stylegan2_synthetic32.pt', 'stylegan2_photo32.pt')]


@pytest.mark.parametrize('shipped', SHIPPED, ids=os.path.basename)
def test_shipped_synthetic_world_generator_loads_and_generates(shipped):
    ckpt = load_checkpoint(shipped)
    args = ckpt['args']
    assert (args.size, args.latent, args.n_mlp, args.channel_max) == (32, 128, 4, 32)
    assert args.real_data_path is None and args.results is None  # no paths of the training machine
    g = Generator(args.size, args.latent, args.n_mlp, channel_multiplier=args.channel_multiplier,
                  channel_max=args.channel_max)
    g.load_state_dict(ckpt['g_ema'])
    g.eval()
    with torch.no_grad():
        images, _ = g([torch.randn(16, args.latent, generator=torch.Generator().manual_seed(0))])
    assert images.shape == (16, 3, 32, 32) and torch.isfinite(images).all()
    # A trained generator: images span the colour range and differ from sample to sample.
    assert images.amin() < -0.5 and images.amax() > 0.5
    assert images.std(dim=0).mean() > 0.1
