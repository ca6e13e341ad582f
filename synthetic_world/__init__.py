"""A procedural world of stylised cat faces with exact keypoints (pure torch).

Every image is drawn from a small set of named world parameters (pose, part
shapes, colours, textures, background); keypoints are computed from the same
parameters, so they are exact at any resolution. The synthetic generator
(``models/generators/synthetic.py``) produces the same parameters from its
latents, and the synthetic dataset mode (``datasets/modes/synthetic.py``)
renders held-out "real" images with them.

Modules, one job each:
- ``factors``: the random factors (``FACTOR_GROUPS``, ``WorldFactors``) and the
  physical parameters they give (``params_from_factors``, ``sample_params``);
- ``keypoints``: keypoint names, the face's geometry, ``keypoints_from_params``;
- ``deformation``: the optional smooth per-face deformation (``WorldFactors.deformation``);
- ``shapes``: the signed-distance shapes parts are drawn with;
- ``photo``: the photo-like factors (a camera-frame scene, occluders, lighting;
  off by default, ``--synthetic_world photo`` turns on all three);
- ``drawing``: ``render(params, size)`` -> images and keypoints;
- ``dataset``: deterministic datasets (``render_dataset``, ``indexed_params``);
- ``generator``: ``SyntheticGenerator``, the world as a differentiable generator with
  StyleGAN2's interface (registered as ``--generator synthetic`` in
  ``models/generators/synthetic.py``);
- ``options``: the ``--synthetic_*`` flags (``add_world_options``,
  ``factors_from_options``);
- ``moving_face``: one face moving smoothly, frame by frame (``iter_synthetic_video``).

Coordinates:
- normalised image coordinates run over [-1, 1] with pixel centres at
  ``(2 i + 1) / S - 1`` (``align_corners=False``, as in ``grid_sample``);
- pixel coordinates are ``(p + 1) * S / 2 - 0.5``, so pixel centres are at
  0 .. S - 1;
- object coordinates: the canonical face fits in the box [-1, 1]^2 (x right,
  y down); a pose maps object point q to image point
  ``2 * translation + scale * R(rotation) @ (mirror_sign * q.x, q.y)``;
- the background is laid out in the face's frame (object coordinates times
  ``BACKGROUND_FRAME_SCALE``), so a pose moves face and background together;
  the photo world's scene and occluders are laid out in the camera's frame
  (normalised image coordinates) instead.

See docs/synthetic_world.md for the factors and the measurements made with them.
"""
from synthetic_world.dataset import PARAM_BLOCK, indexed_params, iter_render_dataset, render_dataset
from synthetic_world.drawing import render
from synthetic_world.factors import (APPEARANCE_GROUPS, BACKGROUND_FRAME_SCALE, BACKGROUND_NOISE_SHAPE,
                                           COLOR_NAMES, FACTOR_GROUPS, FACTOR_SLICES, FUR_NOISE_SHAPE,
                                           MAX_DISTRACTORS, MAX_MODES, MODE_FACTOR, NUM_FACTORS,
                                           POSE_SHAPE_GROUPS, WorldFactors, canonical_params, concat_params,
                                           params_from_factors, params_to, sample_params, slice_params)
from synthetic_world.keypoints import (KEYPOINT_NAMES, MIRROR_PERMUTATION, MODE_NAMES, NUM_KEYPOINTS,
                                             SHAPE_NAMES, canonical_keypoints, flip_keypoints,
                                             keypoints_from_params, object_keypoints)
from synthetic_world.options import add_world_options, factors_from_options

__all__ = [
    'PARAM_BLOCK',
    'indexed_params',
    'iter_render_dataset',
    'render_dataset',
    'render',
    'APPEARANCE_GROUPS',
    'BACKGROUND_FRAME_SCALE',
    'BACKGROUND_NOISE_SHAPE',
    'COLOR_NAMES',
    'FACTOR_GROUPS',
    'FACTOR_SLICES',
    'FUR_NOISE_SHAPE',
    'MAX_DISTRACTORS',
    'MAX_MODES',
    'MODE_FACTOR',
    'NUM_FACTORS',
    'POSE_SHAPE_GROUPS',
    'WorldFactors',
    'canonical_params',
    'concat_params',
    'params_from_factors',
    'params_to',
    'sample_params',
    'slice_params',
    'KEYPOINT_NAMES',
    'MIRROR_PERMUTATION',
    'MODE_NAMES',
    'NUM_KEYPOINTS',
    'SHAPE_NAMES',
    'canonical_keypoints',
    'flip_keypoints',
    'keypoints_from_params',
    'object_keypoints',
    'add_world_options',
    'factors_from_options',
]
