"""train.py over two simulated nodes on this machine: two torchrun launches (--nnodes 2, one process each)
meeting through the c10d rendezvous on 127.0.0.1, gloo on the CPU. An uninterrupted run, a run whose one
node loses its training process to SIGKILL and is restarted, and two nodes started with different flags."""
import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO
from utils.checkpoint import load_checkpoint
from utils.distributed import ABSENT, describe_by_rank
from utils.schedules import zero_lr_iterations

ITERATIONS, ANNEAL, PERIOD, CKPT_EVERY = 6, 2, 3, 2
NODES = 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _flags(tiny_configs, results):
    return tiny_configs.synthetic + ['--exp-name', 'nodes', '--results', str(results), '--iter', str(ITERATIONS),
                                     '--anneal_psi', str(ANNEAL), '--period', str(PERIOD), '--log_every', '1',
                                     '--ckpt_every', str(CKPT_EVERY)]


def _launch_nodes(train_process, per_node_argv, env=None, max_restarts=0, timeout=400):
    """Start one torchrun per node (node 0 hosts the rendezvous store), wait for both.

    Returns one SimpleNamespace per node: returncode, stdout, stderr, ended (time.monotonic() at exit).
    """
    endpoint = f'127.0.0.1:{_free_port()}'
    procs = []
    for node, argv in enumerate(per_node_argv):
        command = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', str(NODES), '--nproc_per_node', '1',
                   '--rdzv_backend', 'c10d', '--rdzv_endpoint', endpoint, '--rdzv_id', 'two-nodes',
                   '--rdzv_conf', f'is_host={int(node == 0)}', '--local_addr', '127.0.0.1',
                   '--max-restarts', str(max_restarts), '--monitor-interval', '0.1',
                   os.path.join('tests', 'rank_fault.py'), *map(str, argv)]
        procs.append(subprocess.Popen(command, cwd=REPO, env=train_process.env(env), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    # Both pipes of both processes are drained at once (one thread each), so neither node blocks on a full pipe.
    results = [None] * len(procs)

    def wait(index, proc):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[index] = SimpleNamespace(returncode=proc.returncode, stdout=out, stderr=err, ended=time.monotonic())
    threads = [threading.Thread(target=wait, args=(i, p)) for i, p in enumerate(procs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _weights(path):
    return torch.load(path, weights_only=True)


def _assert_same_weights(got, want, exact=True):
    for key in ('t', 't_ema', 'll'):
        assert sorted(got[key]) == sorted(want[key])
        for name, value in want[key].items():
            if exact:
                assert torch.equal(got[key][name], value), f'{key}.{name} differs'
            else:
                torch.testing.assert_close(got[key][name], value, rtol=1e-5, atol=1e-6, msg=f'{key}.{name}')


def _explain(nodes):
    return '\n\n'.join(f'node {i}: exit {n.returncode}\n{n.stdout[-1500:]}\n{n.stderr[-3000:]}'
                       for i, n in enumerate(nodes))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, train_process, tiny_configs):
    results, weights = tmp_path_factory.mktemp('results'), tmp_path_factory.mktemp('weights')
    nodes = _launch_nodes(train_process, [_flags(tiny_configs, results)] * NODES, env={'WEIGHTS_DIR': str(weights)})
    assert [n.returncode for n in nodes] == [0, 0], _explain(nodes)
    return SimpleNamespace(exp_dir=results / 'nodes', weights=weights, nodes=nodes)


@pytest.mark.slow
def test_two_nodes_train_the_same_weights_and_only_global_rank_0_writes(uninterrupted, read_events):
    run = uninterrupted
    ranks = [_weights(run.weights / f'rank{r}.pt') for r in range(NODES)]
    _assert_same_weights(ranks[1], ranks[0])  # DDP kept both nodes' copies identical
    ckpt = load_checkpoint(str(run.exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt'))
    _assert_same_weights(ckpt, ranks[0])
    assert len(ckpt['rank_rng_states']) == NODES
    # Global rank 0 prints and writes; it sits on either node (the rendezvous orders them), never on both.
    printed = [n.stdout.count('----------------- Options') for n in run.nodes]
    assert sorted(printed) == [0, 1], printed
    events = read_events(run.exp_dir)  # asserts there is exactly one event file
    assert sorted(events.scalars('Loss/reconstruction')) == list(range(1, ITERATIONS + 1))
    saves = set(range(CKPT_EVERY, ITERATIONS + 1, CKPT_EVERY)) | set(zero_lr_iterations(ANNEAL, PERIOD, ITERATIONS, 2))
    assert sorted(os.listdir(run.exp_dir / 'checkpoints')) == [f'{i:07d}.pt' for i in sorted(saves | {ITERATIONS})]


@pytest.mark.slow
def test_a_node_whose_process_is_killed_rejoins_and_resumes_like_an_uninterrupted_run(uninterrupted, tmp_path,
                                                                                      train_process, tiny_configs):
    """Global rank 1 is SIGKILLed at its fifth step; both launches have --max-restarts 1 and --resume: the
    group forms again (a new rendezvous round) and continues from the checkpoint of iteration 4."""
    weights = tmp_path / 'weights'
    weights.mkdir()
    env = {'FAULT_RANK': '1', 'FAULT_ITERATION': '5', 'FAULT_SIGNAL': str(int(signal.SIGKILL)),
           'FAULT_MARKER': str(tmp_path / 'fault_done'), 'WEIGHTS_DIR': str(weights)}
    argv = _flags(tiny_configs, tmp_path / 'results') + ['--resume']
    nodes = _launch_nodes(train_process, [argv] * NODES, env=env, max_restarts=1)
    assert [n.returncode for n in nodes] == [0, 0], _explain(nodes)
    everything = ''.join(n.stdout + n.stderr for n in nodes)
    assert everything.count('rank 1: sending signal 9 to itself') == 1
    exp_dir = tmp_path / 'results' / 'nodes'
    assert f"Resuming from {exp_dir / 'checkpoints' / '0000004.pt'} at iteration 4" in everything
    final = load_checkpoint(str(exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt'))
    reference = load_checkpoint(str(uninterrupted.exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt'))
    _assert_same_weights(final, reference, exact=False)
    _assert_same_weights(_weights(weights / 'rank1.pt'), _weights(weights / 'rank0.pt'))
    assert len(glob.glob(str(exp_dir / 'events.out.tfevents.*'))) == 2  # the first attempt's and the resumed one's


@pytest.mark.slow
def test_nodes_started_with_different_batch_sizes_both_stop_with_one_error_line(tmp_path, train_process,
                                                                                  tiny_configs):
    argv = _flags(tiny_configs, tmp_path)
    started = time.monotonic()
    nodes = _launch_nodes(train_process, [argv, argv + ['--batch', '3']], timeout=300)
    assert all(n.returncode != 0 for n in nodes), _explain(nodes)
    for node in nodes:
        errors = [line for line in node.stderr.splitlines() if line.startswith('error:')]
        assert len(errors) == 1, node.stderr[-3000:]
        # The ranks' order depends on which node joined first: rank 0 may hold either value.
        assert ('--batch: 2 on rank 0, 3 on rank 1' in errors[0]) != ('--batch: 3 on rank 0, 2 on rank 1' in errors[0])
        assert 'iteration' not in node.stderr  # stopped before the first training step
    assert not os.path.exists(tmp_path / 'nodes' / 'checkpoints') or not os.listdir(tmp_path / 'nodes' / 'checkpoints')
    # Both stop together: the check is one collective right after the group forms, so neither waits for a timeout.
    assert abs(nodes[0].ended - nodes[1].ended) < 30, (nodes[0].ended - started, nodes[1].ended - started)


def test_values_by_rank_are_described_in_groups_of_ranks():
    assert describe_by_rank([2, 2, 3, 3, 2]) == '2 on ranks 0-1, 4, 3 on ranks 2-3'
    assert describe_by_rank(['cpu', ABSENT]) == "'cpu' on rank 0, (absent) on rank 1"


# --- scripts/slurm/train.sbatch with SLURM's commands replaced by recorders ------------------------

SBATCH = os.path.join(REPO, 'scripts', 'slurm', 'train.sbatch')
FAKE_SRUN = '''#!/usr/bin/env bash
# Records its process id and arguments (one per line, written last); with FAKE_WAIT it runs until SIGTERM
# (recorded), else exits FAKE_STATUS.
[ -n "${FAKE_WAIT:-}" ] && trap 'echo TERM >> "$FAKE_LOG.signals"; exit 143' TERM
echo $$ > "$FAKE_LOG.pid"
printf '%s\\n' "$@" > "$FAKE_LOG.args" && mv "$FAKE_LOG.args" "$FAKE_LOG.srun"
if [ -n "${FAKE_WAIT:-}" ]; then
    while :; do sleep 0.05; done
fi
exit "${FAKE_STATUS:-0}"
'''
FAKE_SCONTROL = '''#!/usr/bin/env bash
# 'show hostnames LIST' prints two host names; anything else is recorded.
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu07\\ngpu08\\n'; exit 0; fi
echo "$@" >> "$FAKE_LOG.scontrol"
'''


@pytest.fixture
def slurm(tmp_path):
    """Run train.sbatch as SLURM would (its environment, srun and scontrol replaced by recorders)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / 'log'
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log), SLURM_JOB_ID='4242',
               SLURM_JOB_NODELIST='gpu[07-08]', SLURM_JOB_NUM_NODES='2', SLURM_GPUS_ON_NODE='4', SLURM_CPUS_PER_TASK='16',
               SLURM_SUBMIT_DIR=REPO)

    def start(*args, **extra_env):
        return subprocess.Popen(['bash', SBATCH, *args], cwd=str(tmp_path), env={**env, **extra_env}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def recorded(what):
        path = tmp_path / f'log.{what}'
        return path.read_text().splitlines() if path.exists() else None
    return SimpleNamespace(start=start, recorded=recorded, env=env)


def test_sbatch_script_is_valid_bash():
    assert subprocess.run(['bash', '-n', SBATCH], capture_output=True, text=True).returncode == 0


def test_sbatch_launches_one_torchrun_per_node_with_the_rendezvous_on_the_first_node(slurm):
    proc = slurm.start('--exp-name', 'cats', '--batch', '5', '--real_data_path', 'a folder/with space',
                       FAKE_STATUS='3', PYTHON='python3')
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err  # srun's status is the job's
    assert slurm.recorded('srun') == [
        '--nodes=2', '--ntasks-per-node=1', '--kill-on-bad-exit=1', '--cpus-per-task=16', 'python3', '-m', 'torch.distributed.run',
        '--nnodes=2', '--nproc_per_node=4', '--rdzv_backend=c10d', '--rdzv_endpoint=gpu07:24242',
        '--rdzv_id=4242', '--max-restarts=3', 'train.py', '--exp-name', 'cats', '--batch', '5',
        '--real_data_path', 'a folder/with space', '--resume']
    assert slurm.recorded('scontrol') is None  # a failure is not requeued by the script


def test_sbatch_stops_training_and_requeues_before_the_time_limit(slurm):
    proc = slurm.start('--exp-name', 'cats', FAKE_WAIT='1', RDZV_PORT='31000', MAX_RESTARTS='1')
    _wait_for(lambda: slurm.recorded('srun'))
    assert '--rdzv_endpoint=gpu07:31000' in slurm.recorded('srun') and '--max-restarts=1' in slurm.recorded('srun')
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends
    out, err = proc.communicate(timeout=30)
    assert slurm.recorded('signals') == ['TERM']  # passed on to srun, which passes it to the tasks
    assert slurm.recorded('scontrol') == ['requeue 4242']
    assert proc.returncode == 143, (out, err)


def test_sbatch_waits_for_training_to_save_when_preempted(slurm):
    proc = slurm.start('--exp-name', 'cats', FAKE_WAIT='1')
    _wait_for(lambda: slurm.recorded('srun'))
    proc.send_signal(signal.SIGTERM)  # SLURM signals the batch script and, itself, every step
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting for the step to save and stop
    os.kill(int(slurm.recorded('pid')[0]), signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, (out, err)
    assert slurm.recorded('scontrol') is None  # SLURM requeues a preempted --requeue job itself


def test_sbatch_outside_slurm_says_how_to_submit(slurm):
    env = {k: v for k, v in slurm.env.items() if k != 'SLURM_JOB_ID'}
    proc = subprocess.run(['bash', SBATCH, '--exp-name', 'x'], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'error: SLURM_JOB_ID and SLURM_JOB_NODELIST are not set; submit this script with sbatch']
    assert slurm.recorded('srun') is None


def _wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.05)


def test_ranks_of_an_attempt_share_a_fresh_token_despite_an_earlier_attempts_keys():
    """The store outlives attempts: keys a dead attempt left must not join a new attempt's ranks to it."""
    import torch.distributed as dist
    from utils.distributed import _attempt_token

    store = dist.HashStore()

    def attempt(first, then):
        tokens = {}
        threads = {rank: threading.Thread(target=lambda r=rank: tokens.update({r: _attempt_token(store, r, 3, 10)}))
                   for rank in range(3)}
        for rank in first:
            threads[rank].start()
        time.sleep(0.3)
        for rank in then:
            threads[rank].start()
        for thread in threads.values():
            thread.join(timeout=15)
        assert sorted(tokens) == [0, 1, 2], tokens  # every rank got an answer
        assert len(set(tokens.values())) == 1, tokens
        return tokens[0]

    store.set('announce/1', 'nonce-of-a-dead-rank')  # what an earlier attempt left behind
    first = attempt(first=[0], then=[1, 2])  # rank 0 must not take the dead rank's announcement
    second = attempt(first=[1, 2], then=[0])  # rank 0 erases live announcements: they are made again
    assert first != second
