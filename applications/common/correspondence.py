"""Correspondence between two images through the congealed template (not runnable).

A point of image A is carried to the template by A's warp, then to image B
by B's warp (``t.transfer_points``). Mirrors are chosen per pair as
PCK-Transfer chooses them (``t.match_flows``: A, B, both or neither mirrored,
whichever gives the smoothest pair of flows), so a point transferred here
lands where PCK-Transfer's would; the result is expressed in B's own pixels.
A clustering model sends both images to one head: ``--cluster``, else the
head its cluster classifier picks for A.
"""
import torch

from applications.common.models import stn_kwargs
from models.spatial_transformers.base import mirror_points


def pair_policy(opt, image_a, classifier=None):
    """The warp policy shared by a pair: 'cartesian' for one head, else (N,) head indices."""
    if opt.num_heads <= 1:
        return 'cartesian'
    cluster = getattr(opt, 'cluster', None)
    if cluster is not None or classifier is None:
        return torch.full((image_a.size(0),), int(cluster or 0), dtype=torch.long, device=image_a.device)
    return classifier.assign(image_a) % classifier.num_clusters


@torch.no_grad()
def transfer_points(t, opt, image_a, image_b, points_a, classifier=None):
    """Carry points of images A to images B.

    Args:
        image_a, image_b: (N, 3, S, S) in [-1, 1].
        points_a: (N, P, 2) pixel positions (x, y) in A.
    Returns:
        (points in B (N, P, 2) pixels of B as given, pick (N,) long: 0 neither
        image mirrored, 1 A, 2 B, 3 both).
    """
    kwargs = dict(stn_kwargs(opt), warp_policy=pair_policy(opt, image_a, classifier))
    pick = torch.zeros(image_a.size(0), dtype=torch.long, device=image_a.device)
    if not opt.no_flip_inference and getattr(t, 'is_flow', False):
        image_a, image_b, points_a, pick = t.match_flows(image_a, image_b, points_a, **kwargs)
        pick = pick.view(-1)
    landed = t.transfer_points(image_a, image_b, points_a, **kwargs)
    return mirror_points(landed, pick >= 2, image_b.shape[-1]), pick


def pixel_grid(size, device=None):
    """(size * size, 2) pixel positions (x, y) of a size x size image, row by row."""
    ys, xs = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing='ij')
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2).float()


@torch.no_grad()
def dense_flow(t, opt, image_a, image_b, classifier=None):
    """Where every pixel of A lands in B.

    Returns:
        (flow (N, S, S, 2): at [n, y, x] the pixel position (x', y') in B of
        pixel (x, y) of A, pick (N,) as ``transfer_points``).
    """
    n, size = image_a.size(0), image_a.shape[-1]
    grid = pixel_grid(size, image_a.device).unsqueeze(0).expand(n, -1, -1)
    landed, pick = transfer_points(t, opt, image_a, image_b, grid, classifier)
    return landed.reshape(n, size, size, 2), pick
