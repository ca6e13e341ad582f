"""Shared pieces of the applications: option tiers, loading the trained
spatial transformer, flip decisions and crash-safe image output.

The applications run as ``python -m applications.NAME``. Their options are
built in tiers: ``options.base_eval_argparse()`` (base + evaluation
flags), then the application's own flags added here, then the dataset mode's
flags during ``options.parse_eval_options``.
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
from utils.distributed import all_gather_tensor, is_main_process, rank_share
from utils.errors import UserError, WeightsMismatchError
from utils.image_io import tensor_to_uint8
from options import base_eval_argparse
from options.tiers import RELEASED_TRUNK_WIDTH, STN_ARCHITECTURE_DEFAULTS
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
                       help="cluster of a clustering model: with the checkpoint's cluster classifier only the "
                            'images it assigns to this cluster are used (without --cluster it picks each '
                            "image's head); without a classifier --cluster is required and every image goes "
                            'to this head')
    group.add_argument('--n_mean', type=int, default=-1,
                       help='number of images averaged into the average congealed image '
                            '(average.png; of the --cluster images with a classifier); -1: no average image')
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
                            "label) or a black-and-white mask (white is the label); a path naming 'cluster0' "
                            "reads --cluster K's own file ('cluster0' -> 'clusterK')")
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
                       help='cluster(s) of a clustering model whose label is propagated onto every frame '
                            "(several at once, e.g. --cluster 0 2); without it the checkpoint's cluster "
                            "classifier picks each frame's cluster (required when there is none)")
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
                       help="cluster to show with a clustering model (required for such models); with the "
                            "checkpoint's cluster classifier only the images it assigns to this cluster are "
                            'shown (--dset_indices count them), mirrored as it says')
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
    """Evaluation parser with the correspondence-video and flow-score flags (finish with parse_eval_options)."""
    return add_flow_score_options(add_vis_correspondence_options(base_eval_argparse()))


def propagation_argparse():
    """Evaluation parser with the propagation and flow-score flags (finish with parse_eval_options)."""
    return add_flow_score_options(add_propagation_options(base_eval_argparse()))


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


def load_stn(args, device, with_classifier=False):
    """Build the spatial transformer for ``args.ckpt`` and load its EMA weights.

    ``args.ckpt`` is a released model's name (downloaded once) or a path. A
    released model's test-time settings (padding mode, iterations, flip
    inference, heads) are applied to ``args`` unless ``args.override``. The
    architecture is taken from the checkpoint's recorded options where
    present, from the flags otherwise; the values used are written back to
    ``args`` (transform, flow_size, stn_channel_multiplier, num_heads).

    Args:
        args: evaluation options (see options.base_eval_argparse).
        device: torch.device for the model.
        with_classifier: also return the checkpoint's cluster classifier
            (models.cluster_classifier.ResnetClassifier, None when it has none).
    Returns:
        The transformer (t_ema) in eval mode on ``device``, gradients off, its trunk at
        ``args.precision``;
        with ``with_classifier`` a tuple (t_ema, classifier or None).
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
    t_ema = t_ema.to(device).eval().requires_grad_(False).set_precision(args.precision)
    if not with_classifier:
        return t_ema
    classifier = None
    if isinstance(ckpt.get('classifier'), dict):
        from models.cluster_classifier import classifier_from_state_dict
        classifier = classifier_from_state_dict(ckpt['classifier'], config['flow_size'],
                                                config['stn_channel_multiplier'], args.real_size,
                                                config['num_heads'])
        classifier = classifier.to(device).eval().requires_grad_(False)
    return t_ema, classifier


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


# ----------------------------------------------------------------------------- flow scores and clusters

def add_flow_score_options(parser):
    """``--flow_scores`` and ``--fraction_retained`` (the original's names and defaults)."""
    if has_option(parser, '--flow_scores'):
        return parser
    group = parser.add_argument_group('filtering by flow scores')
    group.add_argument('--flow_scores', type=str, default=None,
                       help='flow scores of the dataset (flow_scores.pt written by applications.flow_scores); '
                            'with --fraction_retained below 1 the worst-scoring images are left out, and '
                            'dataset indices (e.g. --dset_indices) count the kept images')
    group.add_argument('--fraction_retained', type=float, default=1.0,
                       help='fraction of the images kept by --flow_scores: those scoring above the '
                            '(1 - F) quantile')
    return parser


def flow_score_problems(opt):
    """Readable problems with the flow-score flags (empty when fine)."""
    problems = []
    if not 0 < opt.fraction_retained <= 1:
        problems.append(f'--fraction_retained must be in (0, 1], got {opt.fraction_retained}')
    elif opt.fraction_retained < 1 and opt.flow_scores is None:
        problems.append('--fraction_retained needs --flow_scores (the scores that rank the images)')
    return problems


def filter_by_flow_scores(opt, dataset):
    """The dataset restricted to the images ``--flow_scores``/``--fraction_retained`` keep.

    Returns:
        (dataset, or a Subset of it, kept (M,) long indices into the original
        dataset in increasing order).
    Raises:
        UserError: unreadable score file, or one whose length differs from
            the dataset's (scores of another dataset).
    """
    from torch.utils.data import Subset
    from utils.score_files import high_score_indices, load_flow_scores

    if getattr(opt, 'flow_scores', None) is None:
        return dataset, torch.arange(len(dataset))
    scores = load_flow_scores(opt.flow_scores, len(dataset))
    kept = high_score_indices(scores, opt.fraction_retained)
    if kept.numel() == 0:
        raise UserError(f'--fraction_retained {opt.fraction_retained} keeps none of the {len(dataset)} images')
    if is_main_process():
        print(f'flow scores keep {kept.numel()} of {len(dataset)} images (--fraction_retained '
              f'{opt.fraction_retained})')
    return (dataset if kept.numel() == len(dataset) else Subset(dataset, kept.tolist())), kept


def check_cluster(opt, classifier=None):
    """Validate ``--cluster`` against the model's heads.

    A model with several heads and no classifier needs ``--cluster``; with a
    classifier it is optional (the classifier picks each image's head).
    Raises UserError otherwise.
    """
    heads = opt.num_heads
    cluster = getattr(opt, 'cluster', None)
    if cluster is not None and not 0 <= cluster < heads:
        raise UserError(f'--cluster {cluster} does not exist: this model has {heads} '
                        f"cluster{'s' if heads > 1 else ''} (0 to {heads - 1})")
    if heads > 1 and cluster is None and classifier is None:
        raise UserError(f'this model has {heads} clusters and its checkpoint no cluster classifier: choose '
                        f'a cluster with --cluster (0 to {heads - 1}), or train a classifier with '
                        f'train_cluster_classifier.py')


@torch.no_grad()
def classifier_clusters(opt, dataset, classifier, device):
    """The cluster the classifier assigns each image of ``dataset`` to ((N,) long CPU tensor, dataset order).

    Mirrors count as their cluster (class modulo the number of clusters), as
    the original divides real images into clusters. Every process classifies
    its share; the result is gathered (collective).
    """
    from torch.utils.data import DataLoader, Subset

    mine = rank_share(list(range(len(dataset))))
    loader = DataLoader(Subset(dataset, mine), batch_size=opt.batch, shuffle=False,
                        num_workers=getattr(opt, 'num_workers', 0), drop_last=False)
    local = [classifier.assign(images.to(device)) % classifier.num_clusters for images in loader]
    local = torch.cat(local) if local else torch.zeros(0, dtype=torch.long, device=device)
    positions = all_gather_tensor(torch.tensor(mine, dtype=torch.long, device=device)).cpu()
    gathered = all_gather_tensor(local).cpu()
    clusters = torch.empty(len(dataset), dtype=torch.long)
    clusters[positions] = gathered
    return clusters


def select_cluster(opt, dataset, classifier, device, kept=None):
    """The images of ``--cluster K`` when the checkpoint has a cluster classifier.

    With a classifier and ``--cluster K`` on a clustering model, only the
    images the classifier assigns to cluster K are kept (each is then aligned
    by head K, mirrored as the classifier says), as the original selects a
    cluster's real images; dataset indices (e.g. ``--dset_indices``) then
    count the kept images. Without a classifier every image is forced onto
    head K, and a note says so.

    Args:
        dataset: the images (possibly already filtered); ``kept`` (M,) long:
            their indices in the input dataset (default: 0 .. M-1).
    Returns:
        (dataset or a Subset of it, kept (M',) long indices into the input dataset).
    Raises:
        UserError: no image belongs to cluster K.
    """
    from torch.utils.data import Subset

    kept = torch.arange(len(dataset)) if kept is None else kept
    cluster = getattr(opt, 'cluster', None)
    if opt.num_heads == 1 or cluster is None:
        return dataset, kept
    if classifier is None:
        if is_main_process():
            print(f'note: the checkpoint has no cluster classifier, so every image is aligned by head {cluster} '
                  f'(train one with train_cluster_classifier.py to keep only the images of cluster {cluster})')
        return dataset, kept
    chosen = torch.nonzero(classifier_clusters(opt, dataset, classifier, device) == cluster).reshape(-1)
    if chosen.numel() == 0:
        raise UserError(f'the cluster classifier assigns none of the {len(dataset)} images to cluster {cluster}; '
                        f'choose another --cluster (0 to {opt.num_heads - 1})')
    if is_main_process():
        print(f'the cluster classifier assigns {chosen.numel()} of {len(dataset)} images to cluster {cluster}')
    return Subset(dataset, chosen.tolist()), kept[chosen]


@torch.no_grad()
def decide_heads(opt, t, classifier, images, cluster=None):
    """Each image's head and mirror, and the warp policy that applies them.

    With a cluster classifier (clustering models), it decides: the head it
    predicts (or ``cluster`` when given) and whether to mirror. Without one,
    every image goes to ``cluster`` (or the single head) and the mirror is
    chosen by flow smoothness (``determine_flips``) unless
    ``opt.no_flip_inference``.

    Args:
        images: (N, 3, S, S) in [-1, 1].
    Returns:
        (inputs (N, 3, S, S) mirrored where chosen, mirrored (N,) bool,
         heads (N,) long, warp policy for the transformer).
    """
    n, device = images.size(0), images.device
    if classifier is not None:
        if cluster is None:
            inputs, _, classes, mirrored = classifier.run_flip(images)
            heads = classes % classifier.num_clusters
        else:
            inputs, mirrored = classifier.run_flip_target(images, cluster)
            heads = torch.full((n,), int(cluster), dtype=torch.long, device=device)
        policy = heads if opt.num_heads > 1 else 'cartesian'
        return inputs, mirrored, heads, policy
    policy = cluster_policy(opt, n, device) if cluster is None else \
        torch.full((n,), int(cluster), dtype=torch.long, device=device)
    inputs, mirrored = determine_flips(t, images, flip_inference=not opt.no_flip_inference,
                                       warp_policy=policy, **stn_kwargs(opt))
    heads = torch.full((n,), int(cluster or 0), dtype=torch.long, device=device)
    return inputs, mirrored, heads, policy


@torch.no_grad()
def compute_flow_scores(t, opt, dataset, device, classifier=None, progress=True):
    """Score every image of ``dataset`` by the smoothness of its residual flow.

    The score is minus the total variation of the flow the transformer
    predicts for the image as it would be congealed (mirrored where the flip
    decision says, with the head the classifier picks for clustering models).
    Runs over this process's share of the images and gathers every share.

    Returns:
        (len(dataset),) float CPU tensor in dataset order; higher is smoother.
    Raises:
        UserError: a transformer without a flow stage, or a clustering model
            with neither a classifier nor ``--cluster``.
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from models.spatial_transformers import flow_total_variation

    if not getattr(t, 'is_flow', False):
        raise UserError('flow scores measure the residual flow, and this spatial transformer has no flow stage '
                        f"(--transform {' '.join(opt.transform)})")
    check_cluster(opt, classifier)
    mine = rank_share(list(range(len(dataset))))
    loader = DataLoader(Subset(dataset, mine), batch_size=opt.batch, shuffle=False,
                        num_workers=opt.num_workers, drop_last=False)
    if progress and is_main_process():
        loader = tqdm(loader, desc='flow scores', unit='batch')
    scores = []
    for images in loader:
        images = images.to(device)
        if classifier is None and opt.num_heads == 1 and not opt.no_flip_inference:
            # The flip decision itself compares flows: keep the chosen flow.
            _, flows = t.forward_with_flip(images, return_flow=True, **stn_kwargs(opt))
        else:
            inputs, _, _, policy = decide_heads(opt, t, classifier, images, getattr(opt, 'cluster', None))
            _, flows = t(inputs, return_flow=True, warp_policy=policy, **stn_kwargs(opt))
        scores.append(-flow_total_variation(flows.float()))
    local = torch.cat(scores) if scores else torch.zeros(0, device=device)
    positions = all_gather_tensor(torch.tensor(mine, dtype=torch.long, device=device))
    gathered = all_gather_tensor(local)
    result = torch.empty(len(dataset), dtype=torch.float32)
    result[positions.cpu()] = gathered.float().cpu()
    return result
