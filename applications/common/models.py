"""Loading a checkpoint's spatial transformer, and deciding heads and flips at test time.

(Not runnable: imported by the applications.)

``load_stn`` builds the transformer a checkpoint holds (a released model's
name or a path) with the architecture it records, and its cluster classifier
when asked; ``decide_heads`` picks each image's head and mirror as the
original does (the classifier when there is one, flow smoothness otherwise).
"""
import argparse

import torch

from options.tiers import RELEASED_TRUNK_WIDTH, STN_ARCHITECTURE_DEFAULTS
from utils.checkpoint import load_checkpoint
from utils.distributed import all_gather_tensor, is_main_process, rank_share
from utils.errors import UserError, WeightsMismatchError
from utils.pretrained import apply_test_settings, resolve_checkpoint


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
    # --real_size 0 (images at their stored sizes, see congeal_dataset): inputs reach the
    # transformer resized to its flow size.
    supersize = args.real_size or config['flow_size']
    if config['flow_size'] > supersize:
        raise UserError(f"the spatial transformer works at flow_size {config['flow_size']}, larger than "
                        f"--real_size {args.real_size}; evaluate at --real_size {config['flow_size']} "
                        f"or more")
    for key, value in config.items():
        setattr(args, key, value)
    extra = {}
    width = trunk_width(ckpt['t_ema'])
    if width is not None and width != RELEASED_TRUNK_WIDTH:
        extra['max_channels'] = width  # a narrow (test or experimental) transformer
    t_ema = get_stn(config['transform'], flow_size=config['flow_size'], supersize=supersize,
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
                                                config['stn_channel_multiplier'], supersize,
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
