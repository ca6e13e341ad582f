"""Pieces several applications share, one module per job (not runnable).

- ``models``: loading the spatial transformer (and cluster classifier) of a
  checkpoint, test-time forward options, flips and clusters.
- ``data``: the dataset of ``--dataset_mode``.
- ``frames``: frames in order from a video, a folder or an LMDB, shared
  between processes.
- ``propagation``: carrying a label from congealed space to images, and the
  label flags.
- ``video_propagation``: the per-batch label propagation of the video tools.
- ``correspondence``: points and dense flow from one image to another.
- ``scores``: flow scores and filtering a dataset by them.
- ``output``: crash-safe PNG, JSON and grid files.
"""
