"""Device choice and multi-process helpers (one process, or one per device under torchrun).

Everything here works in a single process without a process group: the
collectives then return their input, ``get_rank()`` is 0 and
``get_world_size()`` is 1. Under torchrun (environment variables RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), ``setup_distributed``
joins the process group: NCCL when the device is CUDA, gloo on the CPU.
Before that, rank and world size are read from the environment so that
"only the main process writes" and per-rank seeding hold from the very start
of a program; collectives act only once the group exists.
"""
import os
import random
import time
import uuid

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import UserError

DEVICE_CHOICES = ('auto', 'cpu', 'cuda')
_TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == '':
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f'environment variable {name}={value!r} is not an integer; '
                        f'unset it or launch the program with torchrun') from None


def launched_by_torchrun():
    """True when the process was started by torchrun (or another launcher that
    sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)."""
    return all(os.environ.get(name) for name in _TORCHRUN_VARIABLES)


def torchrun_environment():
    """(rank, world_size, local_rank) from the launcher's environment; (0, 1, 0) without one."""
    if not launched_by_torchrun():
        return 0, 1, 0
    rank, world_size, local_rank = _env_int('RANK', 0), _env_int('WORLD_SIZE', 1), _env_int('LOCAL_RANK', 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise UserError(f'inconsistent launcher environment RANK={rank} WORLD_SIZE={world_size} '
                        f'LOCAL_RANK={local_rank}; start the program with torchrun')
    return rank, world_size, local_rank


def is_initialized():
    """True when a torch.distributed process group is active in this process."""
    return dist.is_available() and dist.is_initialized()


def choose_device(device_flag, local_rank=0):
    """The torch.device for ``--device``: 'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'.

    Under torchrun each process takes the GPU numbered by its LOCAL_RANK.
    Raises UserError for 'cuda' without a usable GPU or an unknown flag.
    """
    if device_flag not in DEVICE_CHOICES:
        raise UserError(f"unknown device '{device_flag}'; choose one of {', '.join(DEVICE_CHOICES)}")
    use_cuda = device_flag == 'cuda' or (device_flag == 'auto' and torch.cuda.is_available())
    if not use_cuda:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise UserError('--device cuda was given but no CUDA GPU is available to PyTorch; '
                        'use --device cpu (or --device auto) on this machine')
    if local_rank >= torch.cuda.device_count():
        raise UserError(f'this process has LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} '
                        f'GPU(s) are visible; start at most that many processes per node '
                        f'(torchrun --nproc_per_node)')
    return torch.device('cuda', local_rank)


def setup_distributed(device_flag='auto'):
    """Pick the device and, under torchrun, join the process group.

    Args:
        device_flag: 'auto', 'cpu' or 'cuda' (the ``--device`` option).
    Returns:
        (device, rank, world_size): a torch.device, this process's rank in
        [0, world_size) and the number of processes (1 without torchrun).
    The backend is NCCL for CUDA devices and gloo for the CPU. Calling it again
    once the group exists only returns the values.
    """
    rank, world_size, local_rank = torchrun_environment()
    device = choose_device(device_flag, local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not is_initialized():
        if not dist.is_available():
            raise UserError('this PyTorch build has no torch.distributed support; run one process '
                            'without torchrun')
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size), rank=rank,
                                world_size=world_size)
    return device, get_rank(), get_world_size()


def _attempt_store(rank, world_size):
    """The launcher's key-value store, with the keys of this attempt only.

    torchrun keeps one store for the whole job (the static rendezvous of
    ``--master_port`` as well as the c10d rendezvous of a multi-node job), and
    the process group's keys carry no attempt number: after a restart a rank
    could read a dead rank's address and fail to connect, or wait forever.
    TORCHELASTIC_RESTART_COUNT cannot tell attempts apart across nodes: a node
    restarted because another node's rank failed does not count a restart.
    So the ranks of an attempt agree on a fresh token (``_attempt_token``) and
    prefix their keys with it.
    """
    from torch.distributed.rendezvous import rendezvous
    store, _, _ = next(rendezvous('env://', rank, world_size))
    return dist.PrefixStore(f'attempt_{_attempt_token(store, rank, world_size)}', store)


# How often a rank announces itself again while waiting for rank 0's reply (seconds).
_ANNOUNCE_EVERY = 1.0
# How long rank 0 waits for every rank to announce itself (as long as the process group's default timeout).
_JOIN_TIMEOUT = 1800.0


def _attempt_token(store, rank, world_size, timeout=_JOIN_TIMEOUT):
    """A token that every rank of this attempt shares and no earlier attempt used (a hex string).

    Rank 0 draws it, erases every rank's earlier announcement, then replies to
    each announcement it sees: written after the erasure, it comes from a live
    rank of this attempt (processes of an earlier attempt are stopped before a
    new one starts). A rank announces a fresh nonce and repeats it every
    ``_ANNOUNCE_EVERY`` seconds until rank 0's reply to that nonce appears, so
    an announcement erased by a late rank 0 is made again.
    """
    deadline = time.monotonic() + timeout
    if rank == 0:
        token = uuid.uuid4().hex
        for other in range(1, world_size):
            store.delete_key(f'announce/{other}')
        waiting = set(range(1, world_size))
        while waiting:
            for other in sorted(waiting):
                if store.check([f'announce/{other}']):
                    nonce = store.get(f'announce/{other}').decode()
                    store.set(f'reply/{nonce}', token)
                    waiting.discard(other)
            if waiting:
                if time.monotonic() > deadline:
                    raise UserError(f'rank(s) {", ".join(map(str, sorted(waiting)))} did not join the process '
                                    f'group within {timeout:.0f} s; check that every node was started')
                time.sleep(0.02)
        return token
    nonce, announced = uuid.uuid4().hex, 0.0
    while True:
        if time.monotonic() - announced >= _ANNOUNCE_EVERY:
            store.set(f'announce/{rank}', nonce)
            announced = time.monotonic()
        if store.check([f'reply/{nonce}']):
            return store.get(f'reply/{nonce}').decode()
        if time.monotonic() > deadline:
            raise UserError(f'rank 0 did not answer within {timeout:.0f} s; check that every node was started')
        time.sleep(0.02)


def get_rank():
    """This process's rank: from the process group when there is one, else from
    the launcher's environment (0 in a plain single process)."""
    if is_initialized():
        return dist.get_rank()
    return torchrun_environment()[0]


def get_world_size():
    """Number of processes: from the process group when there is one, else from
    the launcher's environment (1 in a plain single process)."""
    if is_initialized():
        return dist.get_world_size()
    return torchrun_environment()[1]


def is_main_process():
    """True on rank 0, the only process that writes files and logs."""
    return get_rank() == 0


def rank_share(items):
    """This process's part of a sequence: every world_size-th item, starting at its rank.

    Every rank gets a disjoint share and together they cover ``items`` (the whole
    sequence without torchrun); shares differ in length by at most one.
    """
    return items[get_rank()::get_world_size()]


def _in_group():
    return is_initialized() and dist.get_world_size() > 1


def barrier():
    """Wait until every process reaches this point (no-op in one process)."""
    if _in_group():
        dist.barrier()


def synchronize(device=None):
    """Finish this process's queued CUDA work (for honest timings), then ``barrier()``.

    Args:
        device: the torch.device whose queue to drain; CPU or None skips that step.
    """
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)
    barrier()


def all_gather_tensor(tensor):
    """Concatenate every rank's ``tensor`` along dim 0, in rank order.

    Args:
        tensor: (N_r, ...) on this process's device; N_r may differ between
            ranks, the other dimensions must agree.
    Returns:
        (sum of N_r, ...) on the same device; ``tensor`` itself in one process.
    No gradient flows through the gathered copies.
    """
    if not _in_group():
        return tensor
    if tensor.dim() == 0:
        tensor = tensor.unsqueeze(0)
    world_size = dist.get_world_size()
    local_count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts = [torch.zeros_like(local_count) for _ in range(world_size)]
    dist.all_gather(counts, local_count)
    counts = [int(c.item()) for c in counts]
    largest = max(counts)
    # Collectives need equal shapes: pad every piece to the largest, trim afterwards.
    padded = tensor.new_zeros((largest,) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor.detach()
    pieces = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts)], dim=0)


def gather_objects(obj):
    """Every rank's ``obj`` (a small picklable value), as a list in rank order, on every rank.

    ``[obj]`` in one process. For occasional bookkeeping (e.g. RNG states at a
    checkpoint), not for tensors on the training path.
    """
    if not _in_group():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class _Absent:
    """Stands for a name one rank's values lack (equal to every other absence, after pickling too)."""

    def __eq__(self, other):
        return isinstance(other, _Absent)

    def __hash__(self):
        return 0

    def __repr__(self):
        return '(absent)'


ABSENT = _Absent()


def differences_between_ranks(values):
    """Which of this rank's named ``values`` are not the same on every rank (one collective).

    Args:
        values: {name: value}; small picklable values compared with ``==``
            (numbers, strings, None, lists of them). Every rank must call this
            at the same point of the program.
    Returns:
        {name: [value on rank 0, ..., value on rank W-1]} for each name whose
        values differ, in name order; a rank that lacks a name holds
        ``ABSENT`` there. {} when all agree, and always in one process.
    """
    every = gather_objects(dict(values))
    if len(every) == 1:
        return {}
    names = sorted(set().union(*every))
    columns = {name: [ranks_values.get(name, ABSENT) for ranks_values in every] for name in names}
    return {name: column for name, column in columns.items() if any(v != column[0] for v in column[1:])}


def describe_by_rank(column):
    """``column`` (one value per rank, as ``differences_between_ranks`` gives) as text, one value per group
    of ranks, e.g. ``2 on ranks 0-7, 3 on ranks 8-15``."""
    groups = []  # (value, [ranks]) in order of first appearance
    for rank, value in enumerate(column):
        for seen, ranks in groups:
            if seen == value:
                ranks.append(rank)
                break
        else:
            groups.append((value, [rank]))
    return ', '.join(f'{value!r} on {_rank_ranges(ranks)}' for value, ranks in groups)


def _rank_ranges(ranks):
    spans = []
    for rank in ranks:
        if spans and spans[-1][1] == rank - 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ', '.join(str(a) if a == b else f'{a}-{b}' for a, b in spans)
    return f'rank {text}' if len(ranks) == 1 else f'ranks {text}'


def all_reduce_mean(tensor):
    """The element-wise mean of ``tensor`` over all ranks (any shape, floating point).

    Returns a new tensor on the same device (a detached copy in one process); the
    input is not modified.
    """
    result = tensor.detach().clone()
    if not result.is_floating_point():
        result = result.float()
    if _in_group():
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        result /= dist.get_world_size()
    return result


def reduce_loss_dict(loss_dict):
    """Average a dict of scalar loss tensors over all ranks (for logging).

    Args:
        loss_dict: name -> scalar (0-d or one-element) tensor; every rank must
            pass the same names.
    Returns:
        name -> detached 0-d tensor holding the mean over ranks (the values
        themselves in one process).
    """
    if not loss_dict:
        return {}
    names = sorted(loss_dict)
    stacked = torch.stack([loss_dict[name].detach().reshape(()).float() for name in names])
    stacked = all_reduce_mean(stacked)  # one collective for all the losses
    return {name: value for name, value in zip(names, stacked)}


def seed_everything(seed):
    """Seed torch (all devices), numpy and random for this rank.

    The per-rank seed is ``seed * world_size + rank``, so ranks draw different
    samples and a run is reproducible for a given number of processes.
    Returns that per-rank seed.
    """
    rank_seed = seed * get_world_size() + get_rank()
    torch.manual_seed(rank_seed)
    np.random.seed(rank_seed % 2 ** 32)
    random.seed(rank_seed)
    return rank_seed


def cleanup():
    """Leave the process group if one was joined (call once at the end of a program)."""
    if is_initialized():
        dist.destroy_process_group()
