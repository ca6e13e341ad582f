"""benchmarks/diagnose_synthetic_alignment.py: pose recovery, mirror decisions, landscape."""
import math

import pytest
import torch

from benchmarks import diagnose_synthetic_alignment as diagnose
from models import get_stn
from utils.synthetic_world.generator import SyntheticGenerator
from utils import synthetic_world as W
from utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')


def test_fit_gives_correlation_and_slope():
    true = torch.linspace(-1, 1, 50)
    corr, slope = diagnose._fit(0.5 * true + 3, true)
    assert corr == pytest.approx(1.0, abs=1e-6) and slope == pytest.approx(0.5, abs=1e-6)
    corr, slope = diagnose._fit(torch.zeros(50), true)
    assert corr == 0 and slope == 0


def test_identity_transformer_undoes_no_pose_factor():
    torch.manual_seed(0)
    opt = type('Opt', (), {'flow_size': 16})()
    stn = get_stn(['similarity', 'flow'], flow_size=16, supersize=32, channel_multiplier=0.125, max_channels=16)
    rows = diagnose.pose_recovery(opt, stn.eval(), SyntheticGenerator(32, W.NUM_FACTORS), samples=20)
    assert [name for name, _, _ in rows] == ['rotation', 'log-scale', 'shift x', 'shift y']
    assert all(abs(slope) < 1e-5 for _, _, slope in rows)


def test_tables_from_a_trained_checkpoint(tmp_path, train_in_process, tiny_configs, capsys):
    argv = tiny_configs.synthetic + ['--exp-name', 'diag', '--results', str(tmp_path), '--iter', '2',
                                     '--anneal_psi', '1', '--period', '1', '--synthetic_rotation', '45']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    checkpoint = tmp_path / 'diag' / 'checkpoints' / '0000002.pt'
    capsys.readouterr()
    diagnose.main([str(checkpoint), '--samples', '40', '--pairs', '4'])
    out = capsys.readouterr().out
    assert torch.is_grad_enabled()  # the tool leaves the process as it found it
    for row in ('| rotation |', '| log-scale |', '| as evaluated |', '| true mirror states |', '| +0 |'):
        assert row in out
    numbers = [float(cell) for line in out.splitlines() if line.startswith('| ')
               for cell in line.strip('|').split('|')[1:] if cell.strip().replace('.', '', 1).lstrip('-').isdigit()]
    assert numbers and all(math.isfinite(n) for n in numbers)


def test_a_checkpoint_of_something_else_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / 'other.pt'
    save_checkpoint({'t_ema': {}}, str(path))
    with pytest.raises(SystemExit) as exit_info:
        diagnose.main([str(path)])
    assert exit_info.value.code != 0
    assert 'not a checkpoint of train.py on the synthetic generator' in capsys.readouterr().err
