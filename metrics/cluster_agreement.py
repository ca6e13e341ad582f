"""Agreement between two labellings of the same items (clusterings against ground truth)."""
import numpy as np

from metrics import METRICS


def _pairs(counts):
    # Number of unordered pairs within each count, summed.
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


@METRICS.register('adjusted_rand_index')
def adjusted_rand_index(labels, reference):
    """Adjusted Rand index of two labellings of the same N items.

    1 when the two partitions are the same (whatever the label names), about 0
    for labellings that agree no more than chance, negative below chance.
    Args:
        labels, reference: (N,) integer labels (arrays, lists or tensors).
    Returns:
        float. When both partitions are trivial in the same way (one group, or
        every item alone) the index is 1.
    """
    labels, reference = np.asarray(labels).reshape(-1), np.asarray(reference).reshape(-1)
    if labels.shape != reference.shape:
        raise ValueError(f'labellings of different lengths: {labels.size} and {reference.size}')
    n = labels.size
    if n < 2:
        return 1.0
    _, a = np.unique(labels, return_inverse=True)
    _, b = np.unique(reference, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    together = _pairs(table)
    rows, columns = _pairs(table.sum(axis=1)), _pairs(table.sum(axis=0))
    expected = rows * columns / _pairs([n])
    best = (rows + columns) / 2
    if best == expected:  # both partitions trivial alike: one group each, or all singletons
        return 1.0
    return (together - expected) / (best - expected)
