"""Samplers: which images each rank reads (sharded under torchrun, in order or shuffled)."""
from torch.utils import data


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
