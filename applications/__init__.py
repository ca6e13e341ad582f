"""Shared pieces of the applications: option tiers, loading the trained
spatial transformer, flip decisions and crash-safe image output.

The applications run as ``python -m applications.NAME``. Their options are
built in tiers: ``utils.options.base_eval_argparse()`` (base + evaluation
flags), then the application's own flags added here, then the dataset mode's
flags during ``utils.options.parse_eval_options``.
"""
import argparse
import json
import math
import os

import numpy as np
import torch
from PIL import Image

from utils.argparse_tools import has_option
from utils.atomic_io import atomic_write
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, WeightsMismatchError
from utils.image_io import tensor_to_uint8
from utils.options import base_eval_argparse
from utils.options.tiers import RELEASED_TRUNK_WIDTH, STN_ARCHITECTURE_DEFAULTS
from utils.pretrained import apply_test_settings, resolve_checkpoint


# ----------------------------------------------------------------------------- option tiers

def add_propagation_options(parser):
    """Flags of ``applications.propagate_to_images`` (the original script's names and defaults).

    ``--output_resolution`` and ``--out`` come from the evaluation tier.
    """
    group = parser.add_argument_group('propagation')
    group.add_argument('-s', '--sigma', type=float, default=1.3,
                       help='standard deviation (pixels) of the Gaussian splat of each propagated pixel')
    group.add_argument('-o', '--opacity', type=float, default=0.75,
                       help='opacity of the propagated label over the image, in [0, 1]')
    group.add_argument('--objects', action='store_true',
                       help="propagate the label's RGB colours (an RGBA edit) instead of colouring "
                            'the mask with a colour map')
    group.add_argument('--cluster', type=int, default=None,
                       help='cluster (head) to use with a clustering model (required when it has '
                            'several heads)')
    group.add_argument('--n_mean', type=int, default=-1,
                       help='number of images averaged into the average congealed image '
                            '(average.png); -1: no average image')
    group.add_argument('--average_path', type=str, default=None,
                       help='an average congealed image to draw the label on '
                            '(average_annotated_grid.png); set automatically by --n_mean')
    group.add_argument('--resolution', type=int, default=256,
                       help='the label is resampled to this many pixels per side before it is '
                            'propagated; larger gives denser correspondences')
    group.add_argument('--dset_indices', type=int, nargs='+', default=None,
                       help='dataset indices of the images to process (default: every image)')
    group.add_argument('--label_path', type=str, default=None,
                       help='label in congealed space: an RGBA image (pixels with alpha > 0 are the '
                            'label) or a black-and-white mask (white is the label)')
    group.add_argument('--save_individual_images', action='store_true',
                       help='also save every output image as its own PNG (default: grids only)')
    add_blend_option(group)
    return parser


def add_blend_option(group):
    """``--blend_alg``: how a propagated label is composited onto images (ops.blend)."""
    from ops.blend import BLEND_ALGORITHMS
    group.add_argument('--blend_alg', type=str, default='alpha', choices=BLEND_ALGORITHMS,
                       help='how the label is blended into the image: alpha compositing, or Laplacian '
                            'blending (laplacian; laplacian_light keeps colours closer to the label)')


def add_pck_options(parser):
    """Flags of ``applications.pck`` (the original script's names and defaults)."""
    group = parser.add_argument_group('PCK-Transfer')
    group.add_argument('--alphas', type=float, nargs='+', default=[0.1, 0.05, 0.01],
                       help='thresholds (fractions of the bounding box or image size) at which to '
                            'evaluate PCK-Transfer')
    if not has_option(parser, '--num_pck_pairs'):
        group.add_argument('--num_pck_pairs', type=int, default=None,
                           help='evaluate this many seeded random pairs (unset: the fixed pairs, or '
                                'one random pairing of the images)')
    group.add_argument('--transfer_both_ways', action='store_true',
                       help='evaluate B -> A transfers as well as A -> B')
    group.add_argument('--vis_transfer', action='store_true',
                       help='save pictures of keypoint transfers (transfers/transfer_grid.png)')
    group.add_argument('--num_bootstrap', type=int, default=0,
                       help='if at least 2, also estimate standard deviations by resampling the '
                            'evaluated pairs this many times')
    return parser


def add_video_label_options(group, resolution, label_required=False):
    """Flags the video applications share, with the original tools' defaults."""
    group.add_argument('--label_path', type=str, default=None, required=label_required,
                       help='dense label in congealed space: an RGBA image (pixels with alpha > 0) or a '
                            "black-and-white mask; a path naming 'cluster0' gives each cluster its own file")
    group.add_argument('--resolution', type=int, default=resolution,
                       help='the label is resampled to this many pixels per side before it is propagated; '
                            'larger finds denser correspondences')
    group.add_argument('--fps', type=float, default=60, help='frames per second of the saved videos')
    group.add_argument('--objects', action='store_true',
                       help="propagate the label's own RGB colours (an RGBA object) instead of a colour scale")
    group.add_argument('--sigma', type=float, default=1.2, help='size (pixels) of the propagated points')
    group.add_argument('--opacity', type=float, default=0.7, help='opacity of the propagated points, in [0, 1]')


def add_mixed_reality_options(parser):
    """Flags of ``applications.mixed_reality`` (the original script's names and defaults)."""
    from datasets.video import SQUARE_PAD_MODES

    group = parser.add_argument_group('mixed reality')
    group.add_argument('--cluster', type=int, nargs='+', default=None,
                       help='cluster(s) of a clustering model whose label is propagated (required for '
                            'such models; several at once, e.g. --cluster 0 2)')
    add_video_label_options(group, resolution=128, label_required=True)
    group.add_argument('--average_path', type=str, default=None,
                       help="average congealed image to draw the label on (labeled_averages.png); a path "
                            "naming 'cluster0' gives each cluster its own average")
    group.add_argument('--save_frames', action='store_true',
                       help='also save every output frame as a PNG (frames/, congealing_frames/)')
    group.add_argument('--overlay_congealed', action='store_true',
                       help='draw the label over the congealed video (congealed.mp4)')
    group.add_argument('--save_correspondences', action='store_true',
                       help='save where every label point lands in every frame (dense_correspondences.pt)')
    group.add_argument('--pad', type=str, default=None, choices=SQUARE_PAD_MODES,
                       help='how non-square video frames (or images of a folder) become square: center '
                            'crops (the default), border/zero pad (as prepare_data.py --pad)')
    add_blend_option(group)
    return parser


def add_vis_correspondence_options(parser):
    """Flags of ``applications.vis_correspondence`` (the original script's names and defaults)."""
    group = parser.add_argument_group('correspondence videos')
    group.add_argument('--cluster', type=int, default=None,
                       help='cluster (head) to show with a clustering model (required for such models)')
    group.add_argument('--length', type=int, default=240,
                       help='frames of each congealing (and propagation) animation; more is smoother')
    group.add_argument('--flip_length', type=int, default=40,
                       help='frames of the mirroring animation of --stage_flip')
    group.add_argument('--vis_in_stages', action='store_true',
                       help="animate each stage of the transformer in turn instead of the composed warp")
    group.add_argument('--stage_flip', action='store_true',
                       help='animate the mirroring of flipped images as a stage of its own, first')
    group.add_argument('--n_mean', type=int, default=-1,
                       help='images averaged into the average-image animation (smoothly_average.mp4); '
                            '-1: none')
    group.add_argument('--dset_indices', type=int, nargs='+', default=[0, 1, 2, 3],
                       help='dataset indices of the images shown')
    add_video_label_options(group, resolution=256)
    group.add_argument('--splat_batch', type=int, default=100,
                       help='frames splatted at once (bounds the memory of the propagation video)')
    return parser


def mixed_reality_argparse():
    """Evaluation parser with the mixed-reality flags (finish with parse_eval_options)."""
    return add_mixed_reality_options(base_eval_argparse())


def vis_correspondence_argparse():
    """Evaluation parser with the correspondence-video flags (finish with parse_eval_options)."""
    return add_vis_correspondence_options(base_eval_argparse())


def propagation_argparse():
    """Evaluation parser with the propagation flags (finish with parse_eval_options)."""
    return add_propagation_options(base_eval_argparse())


def pck_argparse():
    """Evaluation parser with the PCK-Transfer flags (finish with parse_eval_options)."""
    return add_pck_options(base_eval_argparse())


def report_option_problems(parser, problems):
    """One argparse error (exit 2) listing every problem, if there are any."""
    if problems:
        parser.error('; '.join(problems))


# ----------------------------------------------------------------------------- the transformer

def _checkpoint_architecture(ckpt):
    """The architecture options recorded in a checkpoint's ``args`` ({} when absent)."""
    saved = ckpt.get('args')
    if isinstance(saved, argparse.Namespace):
        saved = vars(saved)
    if not isinstance(saved, dict):
        return {}
    found = {key: saved[key] for key in STN_ARCHITECTURE_DEFAULTS if saved.get(key) is not None}
    if isinstance(found.get('transform'), str):
        found['transform'] = [found['transform']]
    return found


def _describe(config):
    return ', '.join(f"{key}={' '.join(value) if key == 'transform' else value}"
                     for key, value in config.items())


def stn_architecture(args, ckpt):
    """The transformer's architecture: the checkpoint's where recorded, else flags, else defaults.

    Args:
        args: evaluation options; architecture flags left unset are None.
        ckpt: the loaded checkpoint dict.
    Returns:
        {'transform': list, 'flow_size': int, 'stn_channel_multiplier': float, 'num_heads': int}.
    Raises:
        UserError: a flag given on the command line contradicts the
            checkpoint (the message names both configurations).
    """
    recorded = _checkpoint_architecture(ckpt)
    requested = {key: getattr(args, key, None) for key in STN_ARCHITECTURE_DEFAULTS}
    requested = {key: value for key, value in requested.items() if value is not None}
    conflicts = [key for key in requested if key in recorded and
                 (list(requested[key]) != list(recorded[key]) if key == 'transform'
                  else float(requested[key]) != float(recorded[key]))]
    if conflicts:
        raise UserError(
            f"checkpoint '{args.ckpt}' holds a spatial transformer with {_describe(recorded)}, but "
            f"the command line asks for {_describe(requested)}; drop "
            f"{', '.join('--' + key for key in conflicts)} (the checkpoint's values are used) or "
            f"use a checkpoint of that architecture")
    config = dict(STN_ARCHITECTURE_DEFAULTS)
    config.update(requested)
    config.update(recorded)
    config['transform'] = list(config['transform'])
    config['flow_size'] = int(config['flow_size'])
    config['num_heads'] = int(config['num_heads'])
    return config


def load_stn(args, device):
    """Build the spatial transformer for ``args.ckpt`` and load its EMA weights.

    ``args.ckpt`` is a released model's name (downloaded once) or a path. A
    released model's test-time settings (padding mode, iterations, flip
    inference, heads) are applied to ``args`` unless ``args.override``. The
    architecture is taken from the checkpoint's recorded options where
    present, from the flags otherwise; the values used are written back to
    ``args`` (transform, flow_size, stn_channel_multiplier, num_heads).

    Args:
        args: evaluation options (see utils.options.base_eval_argparse).
        device: torch.device for the model.
    Returns:
        The transformer (t_ema) in eval mode on ``device``, gradients off.
    Raises:
        UserError: unknown name or missing file, unreadable checkpoint, no
            ``t_ema`` in it, flags contradicting it, weights of another
            architecture, or a flow size larger than ``--real_size``.
    """
    from models import get_stn
    from models.spatial_transformers import trunk_width

    path = resolve_checkpoint(args.ckpt)
    apply_test_settings(args, args.ckpt)
    ckpt = load_checkpoint(path, map_location='cpu')
    if not isinstance(ckpt, dict) or 't_ema' not in ckpt:
        raise UserError(f"checkpoint '{path}' has no spatial transformer (no 't_ema' entry); give a "
                        f"GANgealing checkpoint saved by train.py or a released model name")
    config = stn_architecture(args, ckpt)
    if config['flow_size'] > args.real_size:
        raise UserError(f"the spatial transformer works at flow_size {config['flow_size']}, larger than "
                        f"--real_size {args.real_size}; evaluate at --real_size {config['flow_size']} "
                        f"or more")
    for key, value in config.items():
        setattr(args, key, value)
    extra = {}
    width = trunk_width(ckpt['t_ema'])
    if width is not None and width != RELEASED_TRUNK_WIDTH:
        extra['max_channels'] = width  # a narrow (test or experimental) transformer
    t_ema = get_stn(config['transform'], flow_size=config['flow_size'], supersize=args.real_size,
                    channel_multiplier=config['stn_channel_multiplier'], num_heads=config['num_heads'],
                    **extra)
    try:
        t_ema.load_state_dict(ckpt['t_ema'])
    except WeightsMismatchError as e:
        raise UserError(f'{path}: {e}; pass the configuration it was trained with (--transform, --flow_size, '
                        f'--stn_channel_multiplier, --num_heads), or leave them out to take the checkpoint\'s') from None
    return t_ema.to(device).eval().requires_grad_(False)


def stn_kwargs(args):
    """Forward options of the transformer at test time: padding mode and iterations."""
    return {'padding_mode': args.padding_mode, 'iters': args.iters}


def cluster_policy(args, batch, device):
    """The warp policy for ``batch`` images: 'cartesian' for one head, else
    every image sent to head ``args.cluster`` ((N,) long tensor)."""
    if args.num_heads <= 1:
        return 'cartesian'
    return torch.full((batch,), int(args.cluster), dtype=torch.long, device=device)


@torch.no_grad()
def determine_flips(t, images, flip_inference=True, warp_policy='cartesian', **stn_kwargs):
    """Decide which images to mirror before congealing.

    With ``flip_inference`` each image and its mirror go through the
    transformer (``t.forward_with_flip``) and the one whose residual flow is
    smoother is kept; otherwise, and for transformers without a flow stage
    (nothing to compare), nothing is mirrored.

    Args:
        t: the spatial transformer.
        images: (N, C, H, W) in [-1, 1].
        flip_inference: try mirrored inputs.
        warp_policy: passed to the transformer ('cartesian' or per-image heads).
        stn_kwargs: other forward options (padding_mode, iters, ...).
    Returns:
        (inputs (N, C, H, W) with the chosen images mirrored, mirrored (N,) bool).
    """
    if not flip_inference or not getattr(t, 'is_flow', True):
        return images, torch.zeros(images.size(0), dtype=torch.bool, device=images.device)
    _, inputs, mirrored = t.forward_with_flip(images, return_inputs=True, return_flip_indices=True,
                                              warp_policy=warp_policy, **stn_kwargs)
    return inputs, mirrored.reshape(-1).bool()


def build_dataset(opt, pck=False):
    """The dataset of the chosen ``--dataset_mode``: images, or PCK pairs with ``pck``.

    Raises UserError when ``--real_data_path`` is missing or the folder is not
    of the needed kind.
    """
    from datasets.modes import DATASET_MODES

    if not getattr(opt, 'real_data_path', None):
        raise UserError('--real_data_path is required: the dataset to run on')
    if not os.path.exists(opt.real_data_path):
        raise UserError(f"dataset '{opt.real_data_path}' does not exist; check --real_data_path")
    mode = DATASET_MODES.get(opt.dataset_mode)
    dataset = mode.build_pck(opt) if pck else mode.build_images(opt, 'test')
    if dataset is None:
        what = 'a PCK dataset (images plus keypoints.pt)' if pck else 'an image dataset'
        raise UserError(f"'{opt.real_data_path}' is not {what} for --dataset_mode {opt.dataset_mode}; "
                        f"prepare it with prepare_data.py")
    return dataset


# ----------------------------------------------------------------------------- crash-safe output

def save_png(array, path):
    """Save a uint8 (H, W, 3) or (H, W) array as a PNG, atomically."""
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format='PNG'))


def save_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True)
    return atomic_write(path, lambda f: f.write(text), mode='w')


def make_grid_array(images, nrow=None, padding=3, value_range=(-1.0, 1.0)):
    """Tile (N, C, H, W) images into one uint8 (H', W', C) array, black borders.

    ``nrow`` images per row (default: int(sqrt(N)), at least 1).
    """
    from torchvision.utils import make_grid

    arrays = torch.from_numpy(tensor_to_uint8(images, value_range)).permute(0, 3, 1, 2)
    nrow = nrow or max(1, int(math.sqrt(images.size(0))))
    grid = make_grid(arrays, nrow=nrow, padding=padding, pad_value=0)
    return grid.permute(1, 2, 0).numpy()


def save_grid(images, path, nrow=None, value_range=(-1.0, 1.0)):
    """Save (N, C, H, W) images as one grid PNG, atomically."""
    return save_png(make_grid_array(images, nrow=nrow, value_range=value_range), path)
