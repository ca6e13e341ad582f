"""Measurements against ground truth, found by name (as StyleGAN2-ADA finds its metrics).

    from metrics import METRICS
    pck = METRICS.get('pck_transfer')(t, dataset, alphas=(0.1,), device=device)

Modules, one metric family each:
- ``pck_transfer``: PCK-Transfer of a spatial transformer on keypoint pairs
  (``evaluate_pck_transfer``, per pair, bootstrap, the printed table);
- ``cluster_agreement``: agreement of two labellings (``adjusted_rand_index``);
- ``feature_distances``: Fréchet and kernel distances between feature sets.

Each module registers its entry functions in ``METRICS`` with
``@METRICS.register(name)``; the registry imports the package's modules on the
first lookup, so adding a metric is adding one module.
"""
from utils.registry import Registry

METRICS = Registry('metric', 'metrics')

__all__ = ['METRICS']
