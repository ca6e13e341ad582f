"""Real data: LMDB image datasets, image folders, PCK keypoint pairs, samplers.

The common names are importable from here (resolved lazily, so importing the
package, e.g. for ``datasets.modes``, loads nothing heavy).
"""
import importlib

_EXPORTS = {
    'MultiResolutionDataset': 'datasets.lmdb_dataset',
    'write_lmdb_dataset': 'datasets.lmdb_dataset',
    'ImageFolderDataset': 'datasets.image_folder',
    'PCKDataset': 'datasets.pck',
    'write_pck_files': 'datasets.pck',
    'data_sampler': 'datasets.samplers',
    'sample_infinite_data': 'datasets.samplers',
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datasets' has no attribute '{name}'")
