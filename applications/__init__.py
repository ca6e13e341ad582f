"""The applications of a trained GANgealing model, run as ``python -m applications.NAME``.

Each runnable module owns its flags and its steps:

- ``propagate_to_images``: carry a label drawn in congealed space to images.
- ``mixed_reality``: propagate a label onto every frame of a video.
- ``vis_correspondence``: animate congealing and dense correspondence.
- ``pck``: PCK-Transfer of keypoints between image pairs.
- ``flow_scores``: rank a dataset's images by how well the transformer fits them (``--score``).
- ``congeal_dataset``: write a dataset's aligned crops.
- ``correspond``: dense correspondence from one image to another.
- ``edit_studio``: the browser studio for drawing and propagating edits.
- ``animate_training_visuals``, ``export_generator``: training outputs.

What several of them share lives in ``applications.common`` (models,
data and frames, propagation, correspondence, flow scores, output files); the
edit studio's pieces live in ``applications.studio``; ``applications.api`` is
the Python API (not runnable). This package imports nothing, so
running one application loads only what it needs.
"""
