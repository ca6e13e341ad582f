"""The study benchmarks/studies/diagnose_synthetic_alignment.py, run as a command on a trained checkpoint."""
import math
import os
import subprocess
import sys

import pytest
import torch

from utils.checkpoint import save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures('one_thread')


def diagnose(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    return subprocess.run([sys.executable, '-m', 'benchmarks.studies.diagnose_synthetic_alignment', *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_tables_from_a_trained_checkpoint(tmp_path, train_in_process, tiny_configs):
    argv = tiny_configs.synthetic + ['--exp-name', 'diag', '--results', str(tmp_path), '--iter', '2',
                                     '--anneal_psi', '1', '--period', '1', '--synthetic_rotation', '45']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    checkpoint = tmp_path / 'diag' / 'checkpoints' / '0000002.pt'
    result = diagnose(checkpoint, '--samples', '40', '--pairs', '4')
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in ('| rotation |', '| log-scale |', '| shift x |', '| shift y |', '| as evaluated |',
                '| true mirror states |', '| +0 |'):
        assert row in out
    numbers = [float(cell) for line in out.splitlines() if line.startswith('| ')
               for cell in line.strip('|').split('|')[1:] if cell.strip().replace('.', '', 1).lstrip('-').isdigit()]
    assert numbers and all(math.isfinite(n) for n in numbers)
    # Correlations lie in [-1, 1].
    pose_rows = [line for line in out.splitlines() if line.startswith(('| rotation |', '| log-scale |'))]
    for line in pose_rows:
        assert -1 - 1e-6 <= float(line.strip('|').split('|')[1]) <= 1 + 1e-6


def test_a_checkpoint_of_something_else_is_one_clear_error(tmp_path):
    path = tmp_path / 'other.pt'
    save_checkpoint({'t_ema': {}}, str(path))
    result = diagnose(path)
    assert result.returncode != 0
    assert 'not a checkpoint of train.py on the synthetic generator' in result.stderr
    assert 'Traceback' not in result.stderr
