"""train.py with two processes on the CPU (gloo): under torchrun (also with a rank killed and the job
restarted), and one DDP step taken apart against one process with the whole batch."""
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import REPO
from utils.checkpoint import load_checkpoint
from utils.schedules import zero_lr_iterations

WORLD_SIZE = 2
ITERATIONS, ANNEAL, PERIOD, CKPT_EVERY = 6, 2, 3, 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _flags(tiny_configs, results, name):
    return tiny_configs.synthetic + ['--exp-name', name, '--results', str(results), '--iter', str(ITERATIONS),
                                     '--anneal_psi', str(ANNEAL), '--period', str(PERIOD), '--log_every', '1',
                                     '--ckpt_every', str(CKPT_EVERY)]


def _torchrun(*options):
    return ['-m', 'torch.distributed.run', '--nproc_per_node', str(WORLD_SIZE), '--master_port', str(_free_port()),
            *options]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, train_process, tiny_configs):
    results = tmp_path_factory.mktemp('results')
    proc = train_process.run(_flags(tiny_configs, results, 'ddp'), module_args=_torchrun(), timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return results / 'ddp', proc


def test_torchrun_two_cpu_processes_train_and_only_rank_0_writes(uninterrupted, read_events):
    exp_dir, proc = uninterrupted
    # Printing and writing happen on rank 0 only: one options table, one PCK table, one event file.
    assert proc.stdout.count('----------------- Options') == 1
    assert proc.stdout.count('| alpha | PCK-Transfer') == 1
    events = read_events(exp_dir)  # asserts there is exactly one event file
    assert sorted(events.scalars('Loss/reconstruction')) == list(range(1, ITERATIONS + 1))
    assert (exp_dir / 'opt.txt').is_file() and (exp_dir / 'opt.json').is_file()
    saves = set(range(CKPT_EVERY, ITERATIONS + 1, CKPT_EVERY)) | set(zero_lr_iterations(ANNEAL, PERIOD, ITERATIONS, 2))
    assert sorted(os.listdir(exp_dir / 'checkpoints')) == [f'{i:07d}.pt' for i in sorted(saves | {ITERATIONS})]
    ckpt = load_checkpoint(str(exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt'))
    assert ckpt['iteration'] == ITERATIONS and ckpt['args'].batch == 2
    assert len(ckpt['rank_rng_states']) == WORLD_SIZE  # each rank's stream, for an exact resume
    assert all(torch.isfinite(v).all() for v in ckpt['t'].values())


def test_killed_rank_restarts_and_resumes_like_an_uninterrupted_run(uninterrupted, tmp_path, train_process,
                                                                    tiny_configs, read_events):
    """Rank 1 is SIGKILLed at its fifth step; torchrun --max-restarts 1 restarts both with --resume."""
    reference_dir, _ = uninterrupted
    env = {'FAULT_RANK': '1', 'FAULT_ITERATION': '5', 'FAULT_SIGNAL': str(int(signal.SIGKILL))}
    argv = [os.path.join('tests', 'rank_fault.py'), *_flags(tiny_configs, tmp_path, 'ddp'), '--resume']
    command = [sys.executable, *_torchrun('--max-restarts', '1'), *argv]
    proc = subprocess.run(command, cwd=REPO, env=train_process.env(env), text=True, capture_output=True,
                          timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert 'rank 1: sending signal 9 to itself' in proc.stderr
    exp_dir = tmp_path / 'ddp'
    # The first attempt's rank 0 could not pass iteration 5 without rank 1: the restart starts at 4.
    assert f"Resuming from {exp_dir / 'checkpoints' / '0000004.pt'} at iteration 4" in proc.stdout
    assert '--resume: no checkpoint of this experiment yet' in proc.stdout  # the first attempt started fresh
    final = load_checkpoint(str(exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt'))
    reference = load_checkpoint(str(reference_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt'))
    for key in ('t', 't_ema', 'll'):
        for name, value in reference[key].items():
            torch.testing.assert_close(final[key][name], value, rtol=1e-5, atol=1e-6, msg=f'{key}.{name}')
    got, want = read_events(exp_dir, single=False), read_events(reference_dir)
    for i in range(1, ITERATIONS + 1):
        assert got.scalars('Loss/reconstruction')[i] == pytest.approx(want.scalars('Loss/reconstruction')[i],
                                                                      rel=1e-6), i


# --- one DDP step against one process -------------------------------------------------------------

FULL_BATCH = 4


def _fixed_batch_patches(train, rank, per_rank, out_path):
    """Replacements (module, name, function): every process draws the same FULL_BATCH pairs (rank r
    takes its slice), the same PCA, and records its models and gradients instead of evaluating."""
    import training.step
    from models.latent_learner import pca_W
    real_pairs, real_step, real_accumulate = training.step.sample_pairs, train.training_step, train.accumulate
    seen = {'losses': []}

    def sample_pairs(generator, ll, psi, batch, flow_size, freeze_ll=False, return_w=False):
        z = torch.randn(FULL_BATCH, generator.style_dim, generator=torch.Generator().manual_seed(7))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(8)  # the generator's noise
            pairs = real_pairs(generator, ll, psi, FULL_BATCH, flow_size, z=z, freeze_ll=freeze_ll, return_w=return_w)
        lo = rank * per_rank
        return tuple(t[lo:lo + per_rank] for t in pairs)

    def initialise_target(opt, generator, ll, loss_fn, device):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(9)
            ll.assign_pca(pca_W(generator, 200, opt.ndirs))

    def training_step(opt, generator, stn, ll, loss_fn, psi):
        seen['ll'] = getattr(ll, 'module', ll)
        terms = real_step(opt, generator, stn, ll, loss_fn, psi)
        seen['losses'].append(terms.total.item())
        return terms

    def accumulate(ema, model, decay):
        seen['t'] = model
        real_accumulate(ema, model, decay)

    def record(opt, t_ema, writer, device, exp_dir):
        grads = {f't.{n}': p.grad.clone() for n, p in seen['t'].named_parameters() if p.grad is not None}
        grads.update({f'll.{n}': p.grad.clone() for n, p in seen['ll'].named_parameters() if p.grad is not None})
        torch.save({'t': seen['t'].state_dict(), 't_ema': t_ema.state_dict(), 'll': seen['ll'].state_dict(),
                    'grads': grads, 'losses': seen['losses']}, out_path)

    return [(training.step, 'sample_pairs', sample_pairs), (train, 'initialise_target', initialise_target),
            (train, 'training_step', training_step), (train, 'accumulate', accumulate),
            (train, 'evaluate_alignment', record)]


def _rank_worker(rank, argv, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import train
    for module, name, function in _fixed_batch_patches(train, rank, FULL_BATCH // WORLD_SIZE,
                                                       os.path.join(out_dir, f'rank{rank}.pt')):
        setattr(module, name, function)
    sys.argv = ['train.py', *argv, '--batch', str(FULL_BATCH // WORLD_SIZE)]
    train.main()


def test_two_ranks_at_batch_2_take_the_step_of_one_process_at_batch_4(tmp_path, tiny_configs, train_in_process,
                                                                       monkeypatch):
    # float32: bfloat16 rounds a batch of 2 and a batch of 4 differently.
    argv = tiny_configs.synthetic + ['--precision', 'fp32', '--exp-name', 'ranks', '--results', str(tmp_path),
                                     '--iter', '1', '--anneal_psi', '2']
    mp.spawn(_rank_worker, args=(argv, _free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    import train
    for module, name, function in _fixed_batch_patches(train, 0, FULL_BATCH, str(tmp_path / 'single.pt')):
        monkeypatch.setattr(module, name, function)
    single = train_in_process(argv[:argv.index('--exp-name')] + ['--exp-name', 'single', '--results', str(tmp_path),
                                                                 '--iter', '1', '--anneal_psi', '2',
                                                                 '--batch', str(FULL_BATCH)])
    assert single.code == 0, single.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD_SIZE)]
    one = torch.load(tmp_path / 'single.pt')
    assert ranks[0]['losses'] != ranks[1]['losses']  # each rank saw its own half ...
    # ... and the mean of the halves' losses is the whole batch's loss (every term is a batch mean).
    assert (ranks[0]['losses'][0] + ranks[1]['losses'][0]) / 2 == pytest.approx(one['losses'][0], rel=1e-5)
    assert any(name.startswith('ll.') for name in one['grads'])  # the target coefficients have gradients
    for name, grad in one['grads'].items():  # DDP averaged the gradients over the ranks
        for rank in ranks:
            torch.testing.assert_close(rank['grads'][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    for key in ('t', 'll', 't_ema'):  # the same update on every rank, and the single process's
        for name, value in one[key].items():
            assert torch.equal(ranks[1][key][name], ranks[0][key][name]), f'{key}.{name} differs between ranks'
            torch.testing.assert_close(ranks[0][key][name], value, rtol=1e-4, atol=1e-6, msg=f'{key}.{name}')
