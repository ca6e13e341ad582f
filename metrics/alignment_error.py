"""Each image's true alignment error: how far its congealed keypoints land from the template's.

A curation score (``applications.common.image_scores``) should rank images by how
badly the transformer aligns them. On a keypoint dataset whose keypoints are
exact (the synthetic world) that quantity is known: carry each image's
visible keypoints into the template and measure their distance from the
template keypoints, where the template keypoint k is the median over the
ordinary images of congealed keypoint k.

Images that hold no object of the dataset's kind (``outliers.pt``: cut, tiny
and scrambled faces) cannot be aligned at all; they count as misfits with
``MISFIT_ERROR``, the mean distance between two points drawn uniformly in the
unit square (a keypoint put anywhere in the template is that far from its
place on average), as is an image with no visible keypoint.
"""
import math

import torch

from metrics import METRICS

# Mean distance between two independent uniform points of the unit square: (2 + sqrt 2 + 5 ln(1 + sqrt 2)) / 15.
MISFIT_ERROR = (2 + math.sqrt(2) + 5 * math.log(1 + math.sqrt(2))) / 15


def template_keypoints(points, visible):
    """The template's keypoints: per keypoint, the median of its visible congealed positions.

    Args:
        points: (N, P, 2) congealed keypoints (any unit).
        visible: (N, P) bool; only visible points vote.
    Returns:
        (P, 2) medians (NaN for a keypoint visible in no image).
    """
    masked = torch.where(visible.unsqueeze(-1), points.double(), float('nan'))
    return masked.nanmedian(dim=0).values.to(points.dtype)


@METRICS.register('alignment_errors')
def alignment_errors(points, visible, size, misfit=None, template=None):
    """Per-image alignment error from congealed keypoints.

    Args:
        points: (N, P, 2) congealed keypoints in pixels of a ``size`` x ``size`` template.
        visible: (N, P) bool.
        size: side of the template grid in pixels (errors are fractions of it).
        misfit: optional (N,) bool, True for images with no object of the
            dataset's kind (outliers); they get ``MISFIT_ERROR`` and take no
            part in the template.
        template: optional (P, 2) template keypoints (default: the median
            over the non-misfit images, ``template_keypoints``).
    Returns:
        (N,) float errors in [0, ~1.4]: the mean over the image's visible
        keypoints of their distance from the template keypoints, divided by
        ``size``; ``MISFIT_ERROR`` for misfits and images without visible keypoints.
    """
    visible = visible.bool()
    misfit = torch.zeros(points.shape[0], dtype=torch.bool) if misfit is None else misfit.bool().cpu()
    points, visible = points.cpu(), visible.cpu()
    if template is None:
        template = template_keypoints(points[~misfit], visible[~misfit])
    counted = visible & torch.isfinite(template).all(-1).unsqueeze(0)
    distance = (points - template.unsqueeze(0)).norm(dim=-1).nan_to_num(0.0)  # (N, P)
    count = counted.sum(1)
    errors = (distance * counted).sum(1) / count.clamp_min(1) / size
    return torch.where(misfit | (count == 0), torch.full_like(errors, MISFIT_ERROR), errors).float()


@METRICS.register('congealed_keypoints')
@torch.no_grad()
def congealed_keypoints(t, images, keypoints, mirrored=None, permutation=None, warp_policy='cartesian',
                        batch=50, **stn_kwargs):
    """Carry keypoints into the template as the applications congeal the images.

    Args:
        t: spatial transformer (``congeal_points``).
        images: (N, 3, S, S) in [-1, 1].
        keypoints: (N, P, 3) pixels (x, y) of the images at size S, then visibility.
        mirrored: optional (N,) bool: these images are congealed mirrored (the
            applications' flip decision); their keypoints are mirrored with
            ``permutation`` (length P) so that keypoint k stays keypoint k.
        warp_policy: 'cartesian' or (N,) long head per image.
        stn_kwargs: forward options (padding_mode, iters).
    Returns:
        (points (N, P, 2) template pixels, of the flow_size grid for a flow
        transformer (normalised positions otherwise), visible (N, P) bool).
    """
    from models.spatial_transformers.base import mirror_points

    n, size = images.shape[0], images.shape[-1]
    keypoints = keypoints.to(images.device)
    if mirrored is not None:
        mirrored = mirrored.to(images.device).bool()
        images = torch.where(mirrored.view(-1, 1, 1, 1), images.flip(3), images)
        keypoints = mirror_points(keypoints, mirrored, size, permutation)
    out = []
    for start in range(0, n, batch):
        chunk = slice(start, start + batch)
        policy = warp_policy if isinstance(warp_policy, str) else warp_policy[chunk]
        out.append(t.congeal_points(images[chunk], keypoints[chunk, :, :2], warp_policy=policy, **stn_kwargs))
    return torch.cat(out).float(), keypoints[..., 2] > 0


def _ranks(values):
    """(N,) -> (N,) float ranks 1..N, ties sharing their mean rank."""
    values = torch.as_tensor(values).double().reshape(-1)
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, values.numel() + 1, dtype=torch.double)
    unique, inverse = values.unique(return_inverse=True)
    sums = torch.zeros(unique.numel(), dtype=torch.double).index_add_(0, inverse, ranks)
    counts = torch.bincount(inverse, minlength=unique.numel()).double()
    return (sums / counts)[inverse]


@METRICS.register('spearman')
def spearman(a, b):
    """Spearman rank correlation of two (N,) sequences, in [-1, 1] (ties get their mean rank)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm()).item()
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0
