"""Propagating labels onto batches of video frames: the per-batch work of the video applications.

(Not runnable: imported by ``applications.mixed_reality`` and the edit studio's
video export, so both write the same pixels.)

Each frame is aligned on its own; every chosen cluster's label is carried
through the inverse warp (``applications.common.propagation``) and splatted onto
the frame. The splat can land on a larger copy of the same square frames
(the video's own pixels): the points are read at that size and the splat's
size scaled with it, so the edit looks the same, only sharper.
"""
import argparse

import torch

from applications.common.output import make_grid_array
from applications.common.propagation import align, points_through_warp, splat_label


def frames_uint8(images):
    """(N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) tensor on the same device."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def tile_clusters(congealed):
    """(N, K, 3, R, R) -> uint8 (N, H', W', 3): K tiles per frame (the frame itself for K = 1)."""
    if congealed.size(1) == 1:
        return frames_uint8(congealed[:, 0])
    nrow = max(1, int(len(congealed[0]) ** 0.5))
    return torch.stack([torch.from_numpy(make_grid_array(c, nrow=nrow)) for c in congealed]).to(congealed.device)


def scaled_splat_options(opt, scale):
    """A copy of ``opt`` whose --sigma (pixels) is ``scale`` times larger, for a splat on a larger picture."""
    if scale == 1:
        return opt
    return argparse.Namespace(**dict(vars(opt), sigma=opt.sigma * scale))


def picks_clusters(opt, classifier):
    """Whether the cluster classifier picks each frame's cluster (a classifier and no --cluster)."""
    return classifier is not None and not getattr(opt, 'cluster', None)


@torch.no_grad()
def propagate_frames(t, opt, images, clusters, labels, canvas=None, classifier=None):
    """Propagate every chosen cluster's label onto a batch of frames.

    Args:
        images: (N, 3, S, S) frames in [-1, 1] at --real_size (what the transformer sees).
        clusters: heads to use (``[None]`` for a unimodal model); ``labels`` one Label each.
        canvas: optional (N, 3, C, C) in [-1, 1], the same square frames at
            another size C; the labels are splatted onto it instead (sigma
            scaled by C / S).
        classifier: a clustering model's cluster classifier: it decides each
            frame's mirror for every chosen cluster (as the original) and,
            without --cluster, each frame's cluster too (``labels`` then holds
            every cluster's; see ``propagate_frames_by_classifier``).
    Returns:
        a dict: 'propagated' uint8 (N, S, S, 3) (or (N, C, C, 3)), 'congealed'
        uint8 (N, H', W', 3) (one tile per cluster), 'points' (N, P, 2) pixels
        of the propagated picture, 'mirrored' (N, K) bool (and 'active' (N,)
        long when the classifier picks the clusters).
    """
    if picks_clusters(opt, classifier):
        return propagate_frames_by_classifier(t, opt, images, labels, classifier, canvas)
    n = images.size(0)
    resolution = opt.output_resolution
    target = images if canvas is None else canvas
    points, congealed, mirrored = [], [], []
    for cluster, label in zip(clusters, labels):
        alignment = align(t, opt, images, cluster=cluster, output_resolution=resolution, classifier=classifier)
        flips, aligned = alignment.mirrored, alignment.congealed
        found = points_through_warp(t, alignment.warp, flips, label.template_points(), target.size(-1),
                                    output_resolution=resolution)
        if getattr(opt, 'overlay_congealed', False):
            aligned = splat_label(aligned, label.pixels_at(resolution).unsqueeze(0).expand(n, -1, -1),
                                  label.colours, label.alpha, opt, opt.blend_alg)
        points.append(found)
        congealed.append(aligned)
        mirrored.append(flips)
    points = torch.cat(points, dim=1)
    colours = torch.cat([label.colours for label in labels])
    alpha = torch.cat([label.alpha for label in labels])
    splat_opt = scaled_splat_options(opt, target.size(-1) / images.size(-1))
    propagated = splat_label(target, points, colours, alpha, splat_opt, opt.blend_alg)
    return {'propagated': frames_uint8(propagated), 'congealed': tile_clusters(torch.stack(congealed, 1)),
            'points': points.float(), 'mirrored': torch.stack(mirrored, 1)}


@torch.no_grad()
def propagate_frames_by_classifier(t, opt, images, labels, classifier, canvas=None):
    """Each frame aligned by the cluster (and mirror) the classifier picks; that cluster's label propagated.

    ``labels`` holds every cluster's label. Points of the other clusters' labels
    are NaN in 'points' (they are not propagated onto that frame); 'mirrored'
    is (N, 1) and 'active' (N,) the picked cluster. Other arguments and
    outputs as ``propagate_frames``.
    """
    resolution = opt.output_resolution
    target = images if canvas is None else canvas
    splat_opt = scaled_splat_options(opt, target.size(-1) / images.size(-1))
    alignment = align(t, opt, images, output_resolution=resolution, classifier=classifier)
    active = alignment.policy
    propagated, congealed = target.clone(), alignment.congealed.clone()
    points = []
    for cluster, label in enumerate(labels):
        found = points_through_warp(t, alignment.warp, alignment.mirrored, label.template_points(), target.size(-1),
                                    output_resolution=resolution)
        here = active == cluster
        found = torch.where(here[:, None, None], found, torch.full_like(found, float('nan')))
        if here.any():
            propagated[here] = splat_label(target[here], found[here], label.colours, label.alpha, splat_opt,
                                           opt.blend_alg)
            if getattr(opt, 'overlay_congealed', False):
                template = label.pixels_at(resolution).unsqueeze(0).expand(int(here.sum()), -1, -1)
                congealed[here] = splat_label(congealed[here], template, label.colours, label.alpha, opt,
                                              opt.blend_alg)
        points.append(found)
    return {'propagated': frames_uint8(propagated), 'congealed': frames_uint8(congealed),
            'points': torch.cat(points, dim=1).float(), 'mirrored': alignment.mirrored.reshape(-1, 1),
            'active': active}


def empty_outputs(opt, clusters, labels, device, classifier=None):
    """What ``propagate_frames`` returns for zero frames (the right shapes), at --real_size."""
    size, resolution = opt.real_size, opt.output_resolution
    tiles = 1 if picks_clusters(opt, classifier) else len(clusters)
    probe = torch.zeros(1, tiles, 3, resolution, resolution, device=device)
    tile = tile_clusters(probe).shape[1:]
    outputs = {'propagated': torch.zeros(0, size, size, 3, dtype=torch.uint8, device=device),
               'congealed': torch.zeros(0, *tile, dtype=torch.uint8, device=device),
               'points': torch.zeros(0, sum(len(label) for label in labels), 2, device=device),
               'mirrored': torch.zeros(0, tiles, dtype=torch.bool, device=device)}
    if picks_clusters(opt, classifier):
        outputs['active'] = torch.zeros(0, dtype=torch.long, device=device)
    return outputs
