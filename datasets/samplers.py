"""Samplers: per-rank sharding for distributed runs and an endless batch stream."""
import torch
from torch.utils import data

from utils.errors import UserError

_SEED_RANGE = 2 ** 62


def data_sampler(dataset, shuffle, distributed):
    """The sampler for ``dataset``.

    Args:
        shuffle: random order (reshuffled each epoch) instead of index order.
        distributed: shard the dataset over the ranks of the initialised
            torch.distributed process group.
    Returns:
        A DistributedSampler, RandomSampler or SequentialSampler.
    """
    if distributed:
        return data.distributed.DistributedSampler(dataset, shuffle=shuffle)
    if shuffle:
        return data.RandomSampler(dataset)
    return data.SequentialSampler(dataset)


def sample_infinite_data(loader, seed=0):
    """Yield batches from ``loader`` forever.

    Before each pass a new epoch seed is drawn from a generator seeded with
    ``seed`` (use the same seed on every rank): it reshuffles the sampler
    (DistributedSampler via ``set_epoch``, RandomSampler via its generator)
    and redraws random pairs of datasets that have ``randomize_pairs``. The
    stream is therefore reproducible for a given seed.
    """
    rng = torch.Generator()
    rng.manual_seed(seed)
    while True:
        epoch_seed = int(torch.randint(0, _SEED_RANGE, (1,), generator=rng))
        sampler = getattr(loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch_seed)
        elif isinstance(sampler, data.RandomSampler):
            generator = torch.Generator()
            generator.manual_seed(epoch_seed)
            sampler.generator = generator
        dataset = getattr(loader, 'dataset', None)
        if hasattr(dataset, 'randomize_pairs'):
            dataset.randomize_pairs(epoch_seed)
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise UserError('the data loader is empty (no full batch); use a larger dataset '
                             'or a smaller batch size')
