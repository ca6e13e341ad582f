"""train.py with two processes on the CPU (gloo): under torchrun, and with every rank's models inspected."""
import os
import socket
import sys

import torch
import torch.multiprocessing as mp

from utils.checkpoint import load_checkpoint

WORLD_SIZE = 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes_train_and_only_rank_0_writes(tmp_path, train_process, tiny_configs,
                                                                read_events):
    argv = tiny_configs.synthetic + ['--exp-name', 'ddp', '--results', str(tmp_path), '--iter', '3',
                                     '--anneal_psi', '2', '--log_every', '1', '--ckpt_every', '1']
    launcher = ['-m', 'torch.distributed.run', '--nproc_per_node', str(WORLD_SIZE),
                '--master_port', str(_free_port())]
    proc = train_process.run(argv, module_args=launcher, timeout=400)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    exp_dir = tmp_path / 'ddp'
    # Printing and writing happen on rank 0 only: one options table, one PCK table, one event file.
    assert proc.stdout.count('----------------- Options') == 1
    assert proc.stdout.count('| alpha | PCK-Transfer') == 1
    events = read_events(exp_dir)  # asserts there is exactly one event file
    assert sorted(events.scalars('Loss/reconstruction')) == [1, 2, 3]
    assert (exp_dir / 'opt.txt').is_file() and (exp_dir / 'opt.json').is_file()
    assert sorted(os.listdir(exp_dir / 'checkpoints')) == ['0000001.pt', '0000002.pt', '0000003.pt']
    ckpt = load_checkpoint(str(exp_dir / 'checkpoints' / '0000003.pt'))
    assert ckpt['iteration'] == 3 and ckpt['args'].batch == 2
    assert all(torch.isfinite(v).all() for v in ckpt['t'].values())


def _rank_worker(rank, argv, port, out_dir):
    """One rank of train.main(), recording its models at the end instead of evaluating."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import train
    seen = {'losses': []}
    real_step, real_accumulate = train.training_step, train.accumulate

    def training_step(opt, generator, stn, ll, loss_fn, psi):
        seen['ll'] = getattr(ll, 'module', ll)
        terms = real_step(opt, generator, stn, ll, loss_fn, psi)
        seen['losses'].append(terms.perceptual.item())
        return terms

    def accumulate(ema, model, decay):
        seen['t'] = model
        real_accumulate(ema, model, decay)

    def record(opt, t_ema, writer, device, exp_dir):
        torch.save({'t': seen['t'].state_dict(), 't_ema': t_ema.state_dict(), 'll': seen['ll'].state_dict(),
                    'losses': seen['losses']}, os.path.join(out_dir, f'rank{rank}.pt'))

    train.training_step, train.accumulate, train.evaluate_alignment = training_step, accumulate, record
    sys.argv = ['train.py', *argv]
    train.main()


def test_ranks_agree_on_every_model_after_training(tmp_path, tiny_configs):
    argv = tiny_configs.synthetic + ['--exp-name', 'ranks', '--results', str(tmp_path), '--iter', '3',
                                     '--anneal_psi', '2']
    mp.spawn(_rank_worker, args=(argv, _free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD_SIZE)]
    assert len(ranks[0]['losses']) == 3
    assert ranks[0]['losses'] != ranks[1]['losses']  # every rank draws its own samples ...
    for key in ('t', 'll', 't_ema'):  # ... yet all end with the same models
        for name, value in ranks[0][key].items():
            assert torch.equal(ranks[1][key][name], value), f'{key}.{name} differs between ranks'
    assert ranks[0]['ll']['coefficients'].abs().max() > 0
