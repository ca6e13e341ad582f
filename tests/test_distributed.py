"""Device choice and the multi-process helpers: single process, and two real gloo processes."""
import os
import random
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from utils import distributed
from utils.errors import UserError

TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


@pytest.fixture
def single_process(monkeypatch):
    """No launcher environment and no process group."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.is_initialized()


def test_single_process_setup_on_cpu(single_process):
    device, rank, world_size = distributed.setup_distributed('cpu')
    assert device == torch.device('cpu') and (rank, world_size) == (0, 1)
    assert not distributed.is_initialized()  # no torchrun: no process group
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1
    assert distributed.is_main_process()
    distributed.barrier()
    distributed.synchronize(device)
    distributed.cleanup()


def test_auto_device_follows_cuda_availability(single_process, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert distributed.choose_device('auto') == torch.device('cpu')
    with pytest.raises(UserError, match='no CUDA GPU'):
        distributed.setup_distributed('cuda')
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        distributed.choose_device('tpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert distributed.choose_device('auto', local_rank=1) == torch.device('cuda', 1)
    with pytest.raises(UserError, match='LOCAL_RANK 2'):
        distributed.choose_device('cuda', local_rank=2)


def test_launcher_environment_is_read_before_the_group_exists(monkeypatch):
    for name, value in (('RANK', '3'), ('WORLD_SIZE', '4'), ('LOCAL_RANK', '1'),
                        ('MASTER_ADDR', '127.0.0.1'), ('MASTER_PORT', '29500')):
        monkeypatch.setenv(name, value)
    assert distributed.launched_by_torchrun()
    assert distributed.torchrun_environment() == (3, 4, 1)
    assert distributed.get_rank() == 3 and distributed.get_world_size() == 4
    assert not distributed.is_main_process()
    monkeypatch.setenv('RANK', '4')
    with pytest.raises(UserError, match='inconsistent launcher environment'):
        distributed.torchrun_environment()
    monkeypatch.setenv('RANK', 'x')
    with pytest.raises(UserError, match='RANK'):
        distributed.torchrun_environment()


def test_single_process_collectives_are_identities(single_process):
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.all_gather_tensor(t) is t
    mean = distributed.all_reduce_mean(t)
    assert torch.equal(mean, t) and mean is not t
    ints = distributed.all_reduce_mean(torch.tensor([1, 2]))
    assert ints.dtype == torch.float32 and ints.tolist() == [1.0, 2.0]
    losses = {'a': torch.tensor(1.5, requires_grad=True), 'b': torch.tensor([2.0])}
    reduced = distributed.reduce_loss_dict(losses)
    assert set(reduced) == {'a', 'b'}
    assert reduced['a'].item() == 1.5 and reduced['b'].item() == 2.0
    assert reduced['a'].shape == () and not reduced['a'].requires_grad
    assert distributed.reduce_loss_dict({}) == {}


def test_seed_everything_seeds_every_generator(single_process, monkeypatch):
    assert distributed.seed_everything(7) == 7
    first = (torch.rand(3), np.random.rand(3), random.random())
    distributed.seed_everything(7)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    distributed.seed_everything(8)
    assert not torch.equal(torch.rand(3), first[0])
    # Rank r of W seeds with seed * W + r.
    for name, value in (('RANK', '1'), ('WORLD_SIZE', '4'), ('LOCAL_RANK', '1'),
                        ('MASTER_ADDR', '127.0.0.1'), ('MASTER_PORT', '29500')):
        monkeypatch.setenv(name, value)
    assert distributed.seed_everything(7) == 29
    expected = torch.Generator().manual_seed(29)
    assert torch.equal(torch.rand(3), torch.rand(3, generator=expected))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_process_worker(rank, world_size, port, out_dir):
    """One torchrun-like process: join the gloo group, run the collectives, save results."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device, got_rank, got_world = distributed.setup_distributed('cpu')
    try:
        # Rank r contributes r + 1 rows holding r, so the pieces differ in length.
        piece = torch.full((rank + 1, 2), float(rank))
        gathered = distributed.all_gather_tensor(piece)
        losses = distributed.reduce_loss_dict({'loss': torch.tensor(float(rank + 1)),
                                               'other': torch.tensor(10.0 * rank)})
        mean = distributed.all_reduce_mean(torch.tensor([2.0 * rank, 4.0]))
        seed = distributed.seed_everything(5)
        distributed.barrier()
        torch.save({'device': str(device), 'rank': got_rank, 'world': got_world,
                    'initialised': distributed.is_initialized(), 'main': distributed.is_main_process(),
                    'gathered': gathered, 'losses': losses, 'mean': mean, 'seed': seed},
                   os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        distributed.cleanup()


def test_two_gloo_processes_gather_and_reduce(tmp_path):
    world_size = 2
    mp.spawn(_two_process_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True)
    results = [torch.load(tmp_path / f'rank{r}.pt') for r in range(world_size)]
    for rank, result in enumerate(results):
        assert result['device'] == 'cpu' and result['initialised']
        assert (result['rank'], result['world']) == (rank, world_size)
        assert result['main'] == (rank == 0)
        assert torch.equal(result['gathered'], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert result['losses']['loss'].item() == 1.5 and result['losses']['other'].item() == 5.0
        assert result['mean'].tolist() == [1.0, 4.0]
        assert result['seed'] == 5 * world_size + rank
