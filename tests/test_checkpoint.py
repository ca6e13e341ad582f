"""utils.checkpoint: atomic saves and allow-listed loads."""
import argparse
import os
import pickle

import pytest
import torch

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from utils.errors import UserError


def _training_like_checkpoint():
    net = torch.nn.Linear(4, 3)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.99))
    net(torch.randn(2, 4)).sum().backward()
    optimiser.step()
    schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimiser, T_0=4, T_mult=2)
    schedule.step()
    return {
        't': net.state_dict(), 't_ema': net.state_dict(), 't_optim': optimiser.state_dict(),
        't_sched': schedule.state_dict(),
        'args': argparse.Namespace(exp_name='demo', transform=['similarity', 'flow'], period=37500.0),
        'iteration': 7, 'rng_state': {'torch': torch.get_rng_state()},
    }


def test_round_trip_of_training_checkpoint(tmp_path):
    saved = _training_like_checkpoint()
    path = tmp_path / 'ckpt.pt'
    save_checkpoint(saved, str(path))
    loaded = load_checkpoint(str(path))
    assert loaded['args'] == saved['args']
    assert loaded['iteration'] == 7
    for key, value in saved['t'].items():
        assert torch.equal(loaded['t'][key], value)
    assert loaded['t_optim']['param_groups'][0]['betas'] == (0.0, 0.99)
    assert loaded['t_sched']['T_0'] == 4
    assert torch.equal(loaded['rng_state']['torch'], saved['rng_state']['torch'])
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary files left


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'version': torch.tensor([1])}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('cannot pickle this')
    with pytest.raises(RuntimeError):
        save_checkpoint({'version': torch.tensor([2]), 'bad': Unpicklable()}, str(path))
    assert torch.equal(load_checkpoint(str(path))['version'], torch.tensor([1]))
    assert os.listdir(tmp_path) == ['ckpt.pt']


class _RunsCode:
    """Unpickling this would run a shell command creating ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('writer', ['pickle_protocol2', 'pickle_default', 'torch_save'])
def test_pickle_that_runs_code_is_refused(tmp_path, writer):
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pt'
    if writer == 'torch_save':
        torch.save({'t_ema': {'w': torch.zeros(1)}, 'args': _RunsCode(marker)}, str(path))
    else:
        payload = {'iteration': 3, 'args': _RunsCode(marker)}
        with open(path, 'wb') as f:
            pickle.dump(payload, f, protocol=2 if writer == 'pickle_protocol2' else pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()
    if writer != 'pickle_default':  # these name the refused global
        assert 'system' in str(info.value)


def test_missing_truncated_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(tmp_path / 'absent.pt'))
    assert 'does not exist' in str(info.value)
    assert isinstance(info.value, UserError)

    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'w': torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))
    path.write_bytes(b'\x00garbage' * 32)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path))
