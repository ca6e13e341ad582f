"""scripts/gpu_check.sh on a machine without a GPU: its no-CUDA path, its verdicts and table, its
CPU rehearsal, the DDP rank check under torchrun (gloo), and how --precision auto on CUDA follows
what it measured."""
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import Row
from tests.conftest import REPO
from utils import precision


def test_no_cuda_prints_one_line_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and 'no CUDA GPU' in out


def test_script_without_cuda_exits_0(tmp_path):
    stamp = os.path.join(sys.prefix, '.gangealing-installed-dev')
    if not os.path.isfile(stamp) or os.path.getmtime(stamp) < os.path.getmtime(os.path.join(REPO, 'setup.py')):
        pytest.skip('this environment is not scripts/env.sh dev\'s up-to-date one (the script would install it)')
    env = dict(os.environ, GANGEALING_VENV=sys.prefix, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(['bash', 'scripts/gpu_check.sh'], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines() == ['gpu_check: no CUDA GPU is visible to PyTorch; nothing to check '
                                                'on this machine']


def test_loss_and_image_verdicts():
    assert gpu_check.loss_agreement_row('training', 'x', 0.5, 0.501, 'fp32').status == 'ok'
    assert gpu_check.loss_agreement_row('training', 'x', 0.5, 0.51, 'fp32').status == 'mismatch'
    assert gpu_check.loss_agreement_row('training', 'x', 0.5, 0.51, 'bf16').status == 'ok'
    assert gpu_check.loss_agreement_row('training', 'x', 0.5, float('nan'), 'bf16').status == 'mismatch'
    assert gpu_check.image_agreement_row('inference', 'x', 5e-3, 'fp32').status == 'ok'
    assert gpu_check.image_agreement_row('inference', 'x', 0.3, 'bf16').status == 'mismatch'
    assert gpu_check.image_agreement_row('inference', 'x', float('inf'), 'bf16').status == 'mismatch'


def _ranks_result(differences=(0.0, 0.0), losses=((0.1, 0.2), (0.3, 0.4))):
    return {'world_size': 2, 'backend': 'nccl', 'iters': 2, 'weights': 100,
            'max_difference_from_rank_0': list(differences), 'losses': [list(row) for row in losses]}


def test_rank_verdicts():
    assert [row.status for row in gpu_check.rank_agreement_rows(_ranks_result(), 2)] == ['ok'] * 3
    statuses = [row.status for row in gpu_check.rank_agreement_rows(_ranks_result(differences=(0.0, 1e-7)), 2)]
    assert statuses == ['ok', 'mismatch', 'ok']
    same_data = gpu_check.rank_agreement_rows(_ranks_result(losses=((0.1, 0.2), (0.1, 0.2))), 2)
    assert [row.status for row in same_data] == ['ok', 'ok', 'mismatch']
    assert gpu_check.rank_agreement_rows(_ranks_result(), 4)[0].status == 'mismatch'


def test_pytest_summary_rows():
    passed = gpu_check.pytest_rows(0, '....\n14 passed in 80.1s\n')
    assert [(r.result, r.status) for r in passed] == [('14 passed in 80.1s', 'ok')]
    skipped = gpu_check.pytest_rows(0, '..s\n2 passed, 12 skipped in 3s\n')
    assert [r.status for r in skipped] == ['ok', 'mismatch']  # on a GPU machine nothing may skip
    failed = gpu_check.pytest_rows(1, 'FAILED tests/test_ops_cuda.py::test_cuda_upfirdn2d_matches_native[dtype3]'
                                      ' - assert\n1 failed, 13 passed in 90s\n')
    assert [r.status for r in failed] == ['mismatch', 'mismatch']
    assert failed[1].check == 'test_cuda_upfirdn2d_matches_native[dtype3]'


def test_a_failing_section_is_an_error_row_and_the_others_still_run(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError('first line\nNCCL error: unhandled system error')
    monkeypatch.setattr(gpu_check, 'section_ops', broken)
    monkeypatch.setattr(gpu_check, 'section_ranks', lambda args: [Row('ranks', 'r', 'fine', 'ok')])
    args = gpu_check.parse_args(['--device', 'cpu', '--sections', 'cuda_tests', 'ops', 'ranks'])
    rows = gpu_check.run_sections(args)
    assert [(r.section, r.status) for r in rows] == [('cuda_tests', 'skipped'), ('ops', 'error'), ('ranks', 'ok'),
                                                     ('precision', 'skipped')]
    assert rows[1].result == 'RuntimeError: NCCL error: unhandled system error'
    assert gpu_check.exit_status(rows) == 1
    assert gpu_check.exit_status([r for r in rows if r.status != 'error']) == 0
    table = gpu_check.format_table(rows).splitlines()
    assert table[0] == '| section | check | result | status |' and len(table) == 2 + len(rows)


def test_cpu_rehearsal_measures_and_decides_without_recording(tmp_path, monkeypatch, capsys):
    record = tmp_path / 'record.json'
    monkeypatch.setenv(precision.RECORD_ENV_VAR, str(record))
    out = tmp_path / 'rows.json'
    status = gpu_check.main(['--device', 'cpu', '--quick', '--config', 'synthetic', '--rounds', '1',
                             '--sections', 'ops', 'training', 'inference', '--json', str(out)])
    rows = [Row(**row) for row in json.loads(out.read_text())]
    assert status == 0, rows
    sections = [row.section for row in rows]
    assert sections.count('ops') >= 3 and 'training' in sections and 'inference' in sections
    by_check = {row.check: row for row in rows}
    assert by_check['first loss: bf16 vs fp32'].status == 'ok'
    assert by_check['STN forward: bf16 vs fp32'].status == 'ok'
    decision = by_check['--precision auto on this GPU']
    assert decision.result.startswith('fp32 (') and 'bf16 unsupported' in decision.result  # no GPU
    assert 'not recorded' in decision.result and not record.exists()
    printed = capsys.readouterr().out
    assert gpu_check.format_table(rows) in printed and 'passed: 0 mismatch' in printed


def test_ranks_agree_under_torchrun_on_cpu(tmp_path):
    """benchmarks/rank_agreement.py itself, two gloo processes, then gpu_check's verdict on its file."""
    out = tmp_path / 'ranks.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                           '--master_port', str(gpu_check._free_port()), '-m', 'benchmarks.rank_agreement',
                           '--out', str(out), '--device', 'cpu', '--iters', '2'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['backend'] == 'gloo' and len(result['losses']) == 2 and len(result['losses'][0]) == 2
    assert [row.status for row in gpu_check.rank_agreement_rows(result, 2)] == ['ok'] * 3


# ----------------------------------------------------------------------------- --precision auto on CUDA

def test_cuda_precision_decision_rule():
    assert precision.decide_cuda_precision(1.8, 1.5, True) == 'bf16'
    assert precision.decide_cuda_precision(1.05, 1.5, True) == 'fp32'   # too small a gain for training
    assert precision.decide_cuda_precision(1.8, 0.9, True) == 'fp32'    # inference would get slower
    assert precision.decide_cuda_precision(1.8, 1.5, False) == 'fp32'   # results differ
    assert precision.decide_cuda_precision(1.8, 1.5, True, bf16_supported=False) == 'fp32'


def test_auto_on_cuda_follows_the_record_for_this_gpu_model(tmp_path, monkeypatch):
    path = str(tmp_path / 'cache' / 'cuda_precision.json')
    monkeypatch.setenv(precision.RECORD_ENV_VAR, path)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    model = ['GPU A (sm_80), torch x']
    monkeypatch.setattr(precision, 'cuda_device_key', lambda device=None: model[0])
    precision.recorded_cuda_precision.cache_clear()
    assert precision.resolve_precision('auto', 'cuda') == 'fp32'  # not measured: fp32
    precision.record_cuda_precision('GPU A (sm_80), torch x', 'bf16', {'training_speedup': 1.9})
    precision.record_cuda_precision('GPU B (sm_70), torch x', 'fp32', {'training_speedup': 0.7})
    assert precision.resolve_precision('auto', 'cuda') == 'bf16'
    assert precision.resolve_precision('fp32', 'cuda') == 'fp32'  # an explicit choice stays
    model[0] = 'GPU B (sm_70), torch x'
    assert precision.resolve_precision('auto', 'cuda') == 'fp32'
    model[0] = 'GPU C (sm_90), torch x'
    assert precision.resolve_precision('auto', 'cuda') == 'fp32'
    with open(path) as f:
        assert json.load(f)['GPU A (sm_80), torch x'] == {'precision': 'bf16', 'training_speedup': 1.9}
    with pytest.raises(ValueError):
        precision.record_cuda_precision('GPU A (sm_80), torch x', 'fp16', {})
    # An unreadable record warns and counts as no measurement.
    with open(path, 'w') as f:
        f.write('{not json')
    precision.recorded_cuda_precision.cache_clear()
    model[0] = 'GPU A (sm_80), torch x'
    with pytest.warns(RuntimeWarning, match='unreadable'):
        assert precision.resolve_precision('auto', 'cuda') == 'fp32'
    precision.recorded_cuda_precision.cache_clear()


def test_official_path_that_is_no_checkout_is_refused_before_any_section(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(gpu_check, 'run_sections', lambda args: ran.append(1) or [])
    with pytest.raises(SystemExit) as raised:
        gpu_check.main(['--device', 'cpu', '--official', str(tmp_path)])
    assert str(raised.value).startswith('error: ') and 'not a checkout of the original' in str(raised.value)
    assert not ran
