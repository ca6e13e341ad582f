"""train.py on bad input: readable one-line errors, the right exit status, nothing half-written."""
import errno
import os
import socket

import pytest
import torch

import train
from models.stylegan2 import Generator
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')


def _error_lines(stderr):
    return [line for line in stderr.replace('\r', '\n').splitlines() if line.startswith('error:')]


def _assert_one_clear_error(result, *phrases):
    assert result.code == 1, (result.code, result.stderr[-3000:])
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def _closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture(scope='module')
def gangealing_checkpoint(tmp_path_factory, train_in_process, tiny_configs):
    """A one-iteration synthetic run's checkpoint and its flags."""
    results = tmp_path_factory.mktemp('results')
    argv = tiny_configs.synthetic + ['--exp-name', 'source', '--results', str(results), '--iter', '1']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    return str(results / 'source' / 'checkpoints' / '0000001.pt')


@pytest.mark.parametrize('flag, name, registered', [
    ('--generator', 'biggan', ('stylegan2', 'synthetic')),
    ('--loss_fn', 'ssim', ('l2', 'laplacian', 'lpips', 'vgg_ssl')),
])
def test_unknown_component_names_exit_2_listing_the_known_ones(flag, name, registered, tmp_path, train_in_process):
    result = train_in_process(['--exp-name', 'x', '--results', str(tmp_path), flag, name])
    assert result.code == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith('train.py: error:') and f"'{name}'" in message and flag in message
    for known in registered:
        assert known in message
    assert not (tmp_path / 'x').exists()  # refused before anything was written


def test_missing_checkpoint_file_is_a_one_line_error(tmp_path, train_in_process, tiny_configs):
    missing = str(tmp_path / 'nowhere' / 'cat.pt')
    result = train_in_process(tiny_configs.stylegan2 + ['--exp-name', 'x', '--results', str(tmp_path),
                                                        '--ckpt', missing])
    _assert_one_clear_error(result, missing, 'does not exist')
    assert not os.listdir(tmp_path / 'x' / 'checkpoints')


def test_generator_of_another_size_is_refused_readably(tmp_path, train_in_process, tiny_configs):
    path = str(tmp_path / 'g32.pt')
    torch.save({'g_ema': Generator(32, 32, 2, channel_multiplier=1).state_dict()}, path)
    result = train_in_process(tiny_configs.stylegan2 + ['--exp-name', 'x', '--results', str(tmp_path),
                                                        '--ckpt', path])  # built for --gen_size 16
    line = _assert_one_clear_error(result, path, '--gen_size')
    assert 'size=32' in line and 'size=16' in line
    assert not os.listdir(tmp_path / 'x' / 'checkpoints')


@pytest.mark.parametrize('changed_flags, phrase', [
    (['--stn_max_channels', '32'], 'spatial transformer'),
    (['--num_heads', '2', '--kmeans_candidates', '16'], 'spatial transformer'),
    (['--ndirs', '2'], '--ndirs'),
], ids=['stn_width', 'num_heads', 'ndirs'])
def test_resuming_with_another_architecture_is_refused_readably(changed_flags, phrase, gangealing_checkpoint,
                                                                tmp_path, train_in_process, tiny_configs):
    result = train_in_process(tiny_configs.synthetic + ['--exp-name', 'x', '--results', str(tmp_path), '--iter',
                                                        '2', '--ckpt', gangealing_checkpoint, *changed_flags])
    _assert_one_clear_error(result, phrase)
    assert not os.listdir(tmp_path / 'x' / 'checkpoints')


def test_stylegan2_refuses_a_synthetic_generator_checkpoint(gangealing_checkpoint, tmp_path, train_in_process,
                                                            tiny_configs):
    result = train_in_process(tiny_configs.stylegan2 + ['--exp-name', 'x', '--results', str(tmp_path),
                                                        '--ckpt', gangealing_checkpoint])
    _assert_one_clear_error(result, gangealing_checkpoint, 'g_ema')


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, train_in_process, tiny_configs,
                                                             monkeypatch):
    real_step = train.training_step
    calls = []

    def step_that_diverges(*args, **kwargs):
        terms = real_step(*args, **kwargs)
        calls.append(1)
        return terms._replace(total=terms.total * float('nan')) if len(calls) >= 3 else terms
    monkeypatch.setattr(train, 'training_step', step_that_diverges)
    result = train_in_process(tiny_configs.synthetic + ['--exp-name', 'nan', '--results', str(tmp_path),
                                                        '--iter', '10', '--ckpt_every', '2'])
    good = str(tmp_path / 'nan' / 'checkpoints' / '0000002.pt')
    _assert_one_clear_error(result, 'non-finite', 'iteration 3', good, '--stn_lr')
    assert len(calls) == 3  # it stopped at once
    assert os.listdir(tmp_path / 'nan' / 'checkpoints') == ['0000002.pt']
    assert load_checkpoint(good)['iteration'] == 2


def test_diverging_learning_rate_stops_with_a_clear_error(tmp_path, train_in_process, tiny_configs):
    # One Adam step of size 1e30 wrecks the STN; the next iteration must fail cleanly.
    result = train_in_process(tiny_configs.synthetic + ['--exp-name', 'lr', '--results', str(tmp_path),
                                                        '--iter', '4', '--anneal_psi', '2', '--stn_lr', '1e30'])
    _assert_one_clear_error(result, 'non-finite', '--stn_lr')


def test_offline_perceptual_weights_give_one_clear_error(tmp_path, train_process, tiny_configs):
    proxy = f'http://127.0.0.1:{_closed_port()}'
    env = {'TORCH_HOME': str(tmp_path / 'torch_home'), 'http_proxy': proxy, 'https_proxy': proxy,
           'HTTP_PROXY': proxy, 'HTTPS_PROXY': proxy, 'no_proxy': '', 'NO_PROXY': ''}
    argv = [a for a in tiny_configs.stylegan2] + ['--exp-name', 'x', '--results', str(tmp_path), '--iter', '1',
                                                  '--loss_fn', 'lpips']
    proc = train_process.run(argv, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and 'vgg16' in lines[0] and '--perceptual_weights' in lines[0], proc.stderr[-3000:]
    assert not os.listdir(tmp_path / 'x' / 'checkpoints')
    assert not list((tmp_path / 'torch_home').rglob('*.pth'))  # no partial file passing for the weights


def test_full_disk_keeps_the_previous_checkpoint_and_stops(tmp_path, train_in_process, tiny_configs, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:  # the second checkpoint: some bytes, then no space left
            f.write(b'\x00' * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', save_until_the_disk_fills)
    result = train_in_process(tiny_configs.synthetic + ['--exp-name', 'full', '--results', str(tmp_path),
                                                        '--iter', '6', '--ckpt_every', '2'])
    good = str(tmp_path / 'full' / 'checkpoints' / '0000002.pt')
    _assert_one_clear_error(result, '0000004.pt', 'No space left on device', f'previous checkpoint ({good}) is intact',
                            '--resume')
    monkeypatch.undo()
    assert os.listdir(tmp_path / 'full' / 'checkpoints') == ['0000002.pt']  # no temporary file either
    assert load_checkpoint(good)['iteration'] == 2


def test_unwritable_options_file_is_one_clear_error(tmp_path, train_in_process, tiny_configs, monkeypatch):
    import options.persistence as persistence

    def no_space(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(persistence, 'write_text_atomically', no_space)
    result = train_in_process(tiny_configs.synthetic + ['--exp-name', 'opts', '--results', str(tmp_path)])
    _assert_one_clear_error(result, 'cannot save the options', 'No space left on device')
    assert not (tmp_path / 'opts' / 'checkpoints').exists()  # it stopped before training


@pytest.mark.parametrize('corrupt, named', [('gradients', 'the gradients'), ('weights', 'the weights')])
def test_non_finite_gradients_or_weights_stop_naming_the_last_good_checkpoint(corrupt, named, tmp_path,
                                                                              train_in_process, tiny_configs,
                                                                              monkeypatch):
    real_step, calls = train.training_step, []

    def step(opt, generator, stn, ll, loss_fn, psi):
        calls.append(1)
        terms = real_step(opt, generator, stn, ll, loss_fn, psi)
        if len(calls) == 3:
            parameter = next(getattr(stn, 'module', stn).parameters())
            if corrupt == 'gradients':  # a finite loss whose backward pass overflows
                parameter.register_hook(lambda grad: grad * float('inf'))
            else:  # a finite loss and gradients, a weight already broken
                with torch.no_grad():
                    parameter.view(-1)[0] = float('nan')
        return terms
    monkeypatch.setattr(train, 'training_step', step)
    result = train_in_process(tiny_configs.synthetic + ['--exp-name', corrupt, '--results', str(tmp_path),
                                                        '--iter', '10', '--ckpt_every', '2'])
    good = str(tmp_path / corrupt / 'checkpoints' / '0000002.pt')
    line = _assert_one_clear_error(result, f'{named}', 'non-finite at iteration 3', good)
    if corrupt == 'weights':
        assert 'the loss' not in line and 'the gradients' not in line
    assert len(calls) == 3 and os.listdir(tmp_path / corrupt / 'checkpoints') == ['0000002.pt']


@pytest.mark.parametrize('flags, phrase', [
    (['--real_data_path', 'does/not/exist'], '--real_data_path was given but would not be used'),
    (['--n_mlp', '4'], '--n_mlp was given but would not be used'),
    (['--kmeans_candidates', '100'], '--kmeans_candidates was given but would not be used'),
    (['--freeze_ll', '--ll_lr', '0.1'], '--ll_lr was given but would not be used'),
], ids=['real_data_path', 'n_mlp', 'kmeans_candidates', 'll_lr'])
def test_flags_the_configuration_would_ignore_are_refused(flags, phrase, train_refused):
    train_refused(flags, phrase)


def test_real_data_path_is_used_once_a_dataset_mode_reads_it(tmp_path, train_in_process):
    missing = str(tmp_path / 'does' / 'not' / 'exist')
    result = train_in_process(['--exp-name', 'x', '--results', str(tmp_path), '--real_data_path', missing,
                               '--dataset_mode', 'image_folder', '--iter', '1', '--device', 'cpu'])
    _assert_one_clear_error(result, missing)
