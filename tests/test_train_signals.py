"""train.py stopped by signals at any moment: start-up, training (one rank or all), final evaluation."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO
from utils.checkpoint import load_checkpoint
from utils.stop_signals import Interrupted, StopRequested

pytestmark = pytest.mark.usefixtures('one_thread')

EXIT_TIMEOUT = 10  # seconds a stopped process may take to exit


def _wait_for_text(path, text, process, timeout=180):
    """True once ``text`` appears in the file ``path``; False when the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _stop(process, signum):
    """Send ``signum`` and return (exit status, seconds it took to exit); kills it after EXIT_TIMEOUT."""
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        code = process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f'the process did not exit within {EXIT_TIMEOUT} s of signal {signum}')
    return code, time.monotonic() - sent


def _start(train_process, tmp_path, argv):
    out, err = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
    with open(out, 'w') as stdout, open(err, 'w') as stderr:
        process = train_process.start(argv, stdout=stdout, stderr=stderr)
    return process, out, err


def test_stop_requested_defers_outside_and_raises_inside_interruptible_sections():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with StopRequested() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at the next bytecode: only recorded
        for _ in range(100):
            if stop.signal is not None:
                break
            time.sleep(0.01)
        assert stop.signal == signal.SIGTERM
        with pytest.raises(Interrupted) as info:  # a section entered after the signal stops at once
            with stop.interruptible():
                pytest.fail('the section should not run')
        assert info.value.signum == signal.SIGTERM
    with StopRequested() as stop:
        with pytest.raises(Interrupted) as info:
            with stop.interruptible():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # interrupted long before this ends
        assert info.value.signum == signal.SIGINT
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_trainer_restores_the_signal_handlers(tmp_path, train_in_process, tiny_configs):
    def custom(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, custom)
    # SIGINT's handler as the test process found it: a process started in the background of a shell
    # without job control inherits SIG_IGN rather than Python's default_int_handler.
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        result = train_in_process(['--exp-name', 'x', '--results', str(tmp_path), '--device', 'cpu',
                                   '--real_data_path', str(tmp_path)])  # refused by the option checks
        assert result.code == 2
        assert signal.getsignal(signal.SIGTERM) is custom and signal.getsignal(signal.SIGINT) is interrupt
        result = train_in_process(tiny_configs.synthetic + ['--exp-name', 'y', '--results', str(tmp_path),
                                                            '--iter', '1'])
        assert result.code == 0, result.stderr[-3000:]
        assert signal.getsignal(signal.SIGTERM) is custom
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_start_up_visuals_exits_within_seconds(tmp_path, train_process, tiny_configs):
    # Assigning 200000 generated samples to two heads for their means makes the first visuals last minutes.
    argv = tiny_configs.synthetic + tiny_configs.kmeans + [
        '--exp-name', 'slow', '--results', str(tmp_path), '--iter', '5', '--num_heads', '2',
        '--n_mean', '200000', '--vis_batch_size', '4']
    process, out, err = _start(train_process, tmp_path, argv)
    try:
        assert _wait_for_text(out, 'tensorboard --logdir', process), err.read_text()[-3000:]
        time.sleep(1.5)  # into the PCA and the visuals
        code, _ = _stop(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 128 + signal.SIGTERM, err.read_text()[-3000:]
    assert 'Stopped by signal 15 during start-up' in out.read_text()
    assert 'Traceback' not in err.read_text()
    assert os.listdir(tmp_path / 'slow' / 'checkpoints') == []  # nothing trained, nothing saved


def test_sigint_during_the_final_evaluation_keeps_the_final_checkpoint(tmp_path, train_process, tiny_configs):
    # Rendering 20000 held-out faces for PCK-Transfer takes far longer than the training.
    argv = tiny_configs.synthetic + ['--exp-name', 'eval', '--results', str(tmp_path), '--iter', '2',
                                     '--synthetic_eval_images', '20000']
    process, out, err = _start(train_process, tmp_path, argv)
    try:
        assert _wait_for_text(err, 'iteration 2/2', process), err.read_text()[-3000:]
        time.sleep(1.0)
        code, _ = _stop(process, signal.SIGINT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 128 + signal.SIGINT, err.read_text()[-3000:]
    final = str(tmp_path / 'eval' / 'checkpoints' / '0000002.pt')
    assert f'Stopped by signal 2 during the final evaluation; the final checkpoint is {final}' in out.read_text()
    assert load_checkpoint(final)['iteration'] == 2
    assert not (tmp_path / 'eval' / 'pck.json').exists()
    # The half-rendered evaluation set was removed, not left looking complete.
    assert not [name for name in os.listdir(tmp_path / 'eval') if name.startswith('.synthetic_eval')]
    assert not (tmp_path / 'eval' / 'synthetic_eval').exists()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_one_rank_signalled_stops_both_ranks_with_a_checkpoint(tmp_path, train_process, tiny_configs):
    """Two gloo processes; only rank 1 receives SIGTERM, at its third step."""
    argv = tiny_configs.synthetic + ['--exp-name', 'pair', '--results', str(tmp_path), '--iter', '1000',
                                     '--ckpt_every', '1000', '--anneal_psi', '1000', '--period', '1000']
    port = _free_port()
    processes = []
    for rank in range(2):
        env = train_process.env(dict(RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                                     MASTER_PORT=str(port), FAULT_RANK='1', FAULT_ITERATION='3',
                                     FAULT_SIGNAL=str(int(signal.SIGTERM))))
        processes.append(subprocess.Popen([sys.executable, os.path.join('tests', 'rank_fault.py'), *argv],
                                          cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    codes = [process.returncode for process in processes]
    assert codes == [128 + signal.SIGTERM] * 2, [err[-2000:] for _, err in outputs]
    match = re.search(r'Stopped by signal 15 at iteration (\d+)', outputs[0][0])
    assert match, outputs[0][0][-2000:]
    assert int(match.group(1)) == 3  # the CPU checks every iteration: the signalled one
    ckpt = load_checkpoint(str(tmp_path / 'pair' / 'checkpoints' / '0000003.pt'))
    assert ckpt['iteration'] == 3 and len(ckpt['rank_rng_states']) == 2
    assert torch.equal(ckpt['rng_state']['torch'], ckpt['rank_rng_states'][0]['torch'])
    assert not torch.equal(ckpt['rank_rng_states'][0]['torch'], ckpt['rank_rng_states'][1]['torch'])
