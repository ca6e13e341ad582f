"""Carrying a label drawn in congealed space to images: the helpers every application shares.

(Not runnable: imported by propagate_to_images, mixed_reality and
vis_correspondence.)

A label is an image in the template's frame: an RGBA edit (pixels with alpha
> 0) or a black-and-white mask. Its pixels become points; each point is sent
through the transformer's inverse warp (a lookup in the sampling grid) to
where it sits in an image, and splatted there (ops.splat.splat_points) with
its colour: the label's own with ``--objects``, otherwise a colour scale
(utils.colour_scales; one scale per cluster of a clustering model).
"""
import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from applications import cluster_policy, determine_flips, stn_kwargs
from ops.splat import splat_points
from utils.colour_scales import scale_colours, scale_for_cluster
from utils.errors import UserError
from utils.image_io import image_has_alpha


class Label:
    """A label's pixels: ``points`` (P, 2) pixel x, y at ``resolution``,
    ``colours`` (P, 3) in [-1, 1], ``alpha`` (P, 1) in [0, 1]."""

    def __init__(self, points, colours, alpha, resolution):
        self.points, self.colours, self.alpha, self.resolution = points, colours, alpha, resolution

    def template_points(self):
        """Normalised template positions (P, 2) (align_corners=False)."""
        return label_pixels_to_template(self.points, self.resolution)

    def pixels_at(self, size):
        """Pixel positions (P, 2) in a ``size`` x ``size`` picture of the template."""
        return label_pixels_to_size(self.points, self.resolution, size)

    def __len__(self):
        return self.points.size(0)


def option_problems(opt):
    """Readable problems with the propagation options (empty when fine)."""
    problems = []
    if not opt.sigma > 0:
        problems.append(f'--sigma must be greater than 0 (got {opt.sigma})')
    if not 0 <= opt.opacity <= 1:
        problems.append(f'--opacity must be in [0, 1] (got {opt.opacity})')
    if opt.resolution < 1:
        problems.append(f'--resolution must be at least 1 (got {opt.resolution})')
    if opt.n_mean == 0 or opt.n_mean < -1:
        problems.append(f'--n_mean must be a positive number of images, or -1 for none (got {opt.n_mean})')
    if opt.dset_indices is not None and min(opt.dset_indices) < 0:
        problems.append('--dset_indices must not be negative')
    return problems


def label_from_rgba(rgba, has_alpha, resolution, objects, device, scale='turbo', name='label'):
    """List the pixels of a congealed-space label given as an RGBA array.

    Args:
        rgba: float (H, W, 4) numpy array in [0, 1].
        has_alpha: alpha decides membership (alpha > 0); when False, pixels
            brighter than mid-grey belong to the label.
        resolution: the label is resampled (bilinearly) to this size first.
        objects: use the label's own RGB colours (and alpha); otherwise the
            pixels are coloured along colour scale ``scale`` in raster order.
        device: where the tensors go.
        name: how the error message calls the label.
    Returns:
        points (P, 2) pixel x, y at ``resolution``; colours (P, 3) in [-1, 1];
        alpha (P, 1) in [0, 1].
    Raises:
        UserError: an empty label.
    """
    label = torch.from_numpy(np.ascontiguousarray(rgba, dtype=np.float32)).permute(2, 0, 1)
    label = label.unsqueeze(0).to(device)  # (1, 4, H, W)
    if not has_alpha:  # a plain mask: brightness decides membership
        label[:, 3] = (label[:, :3].mean(dim=1) > 0.5).float()
    if label.shape[-2:] != (resolution, resolution):
        label = F.interpolate(label, size=(resolution, resolution), mode='bilinear', align_corners=False)
    rows, cols = torch.where(label[0, 3] > 0)
    if rows.numel() == 0:
        raise UserError(f'{name} is empty (no pixel has alpha > 0, or the mask is all black)')
    points = torch.stack([cols, rows], dim=-1).float()
    alpha = label[0, 3, rows, cols].unsqueeze(1).clamp(0, 1)
    if objects:
        colours = label[0, :3, rows, cols].t() * 2 - 1
    else:
        colours = scale_colours(scale, points.size(0), device)
        alpha = torch.ones_like(alpha)
    return points, colours, alpha


def load_label(path, resolution, objects, device, scale='turbo'):
    """Read a congealed-space label file and list its pixels (see ``label_from_rgba``).

    ``path`` is an RGBA image (label = alpha > 0) or an image without alpha
    (label = pixels brighter than mid-grey).
    Raises:
        UserError: missing or unreadable file, or an empty label.
    """
    if not os.path.isfile(path):
        raise UserError(f"label '{path}' does not exist; check --label_path")
    try:
        with Image.open(path) as image:
            has_alpha = image_has_alpha(image)
            rgba = np.asarray(image.convert('RGBA'), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"label '{path}' could not be read as an image ({e})") from None
    return label_from_rgba(rgba, has_alpha, resolution, objects, device, scale=scale, name=f"label '{path}'")


def cluster_label_path(path, cluster):
    """The label of ``cluster`` for a path naming cluster 0 ('..._cluster0.png' ->
    '..._cluster2.png'); other paths are shared by every cluster."""
    return re.sub(r'cluster0(?=[^/\\]*$)', f'cluster{cluster}', path) if 'cluster0' in os.path.basename(path) else path


def load_labels(opt, clusters, device):
    """One Label per entry of ``clusters`` (None for a unimodal model).

    A --label_path naming 'cluster0' gives each cluster its own file (the
    '0' replaced by the cluster's number); colours follow each cluster's scale.
    """
    labels = []
    for cluster in clusters:
        path = opt.label_path if cluster is None else cluster_label_path(opt.label_path, cluster)
        points, colours, alpha = load_label(path, opt.resolution, opt.objects, device,
                                            scale=scale_for_cluster(cluster))
        labels.append(Label(points, colours, alpha, opt.resolution))
    return labels


def label_pixels_to_template(points, resolution):
    """Label pixels at ``resolution`` -> normalised template positions (align_corners=False)."""
    return (2 * points + 1) / resolution - 1


def label_pixels_to_size(points, resolution, size):
    """Label pixels at ``resolution`` -> pixel coordinates of a ``size`` image of the template."""
    return (points + 0.5) * (size / resolution) - 0.5


@torch.no_grad()
def congeal(t, opt, images, cluster=None):
    """Flip decision and alignment of a batch.

    ``cluster`` picks the head of a clustering model (default ``--cluster``).
    Returns (inputs mirrored where chosen, mirrored (N,) bool, warp policy,
    congealed (N, 3, R, R) with R = --output_resolution).
    """
    policy = _policy(opt, images, cluster)
    inputs, mirrored = determine_flips(t, images, flip_inference=not opt.no_flip_inference,
                                       warp_policy=policy, **stn_kwargs(opt))
    congealed = t(inputs, output_resolution=opt.output_resolution, warp_policy=policy, **stn_kwargs(opt))
    return inputs, mirrored, policy, congealed


def _policy(opt, images, cluster):
    if cluster is None:
        return cluster_policy(opt, images.size(0), images.device)
    return torch.full((images.size(0),), int(cluster), dtype=torch.long, device=images.device)


@torch.no_grad()
def uncongeal_template_points(t, opt, inputs, mirrored, policy, template, output_resolution=None):
    """Where normalised template points (P, 2) land in each image.

    Args:
        inputs: (N, 3, S, S) images as the transformer saw them (mirrored where
            ``mirrored`` says).
        output_resolution: also return the congealed images at this size.
    Returns:
        points (N, P, 2) pixels of the *original* (unmirrored) images, and the
        congealed images (N, 3, R, R) when ``output_resolution`` is given.
    """
    n, size = inputs.size(0), inputs.size(-1)
    template = template.unsqueeze(0).expand(n, -1, -1)
    result = t.uncongeal_points(inputs, template, normalize_input_points=False, unnormalize_output_points=True,
                                warp_policy=policy, output_resolution=output_resolution,
                                return_congealed_img=output_resolution is not None, **stn_kwargs(opt))
    points, congealed = result if output_resolution is not None else (result, None)
    # Points found in a mirrored input belong at the mirrored x of the original image.
    points = points.clone()
    points[..., 0] = torch.where(mirrored.view(n, 1), size - 1 - points[..., 0], points[..., 0])
    return (points, congealed) if output_resolution is not None else points


def splat_label(images, points, colours, alpha, opt, blend_alg='alpha'):
    """Splat label points (N, P, 2) with colours (P, 3) and alpha (P, 1) onto (N, 3, H, W) images."""
    return splat_points(images, points, sigma=opt.sigma, opacity=opt.opacity, colors=colours.unsqueeze(0),
                        alpha_channel=alpha.unsqueeze(0), blend_alg=blend_alg)


@torch.no_grad()
def propagate(t, opt, images, inputs, mirrored, policy, label, blend_alg='alpha'):
    """Splat ``label`` (a Label) onto ``images`` (N, 3, S, S) through the inverse warps."""
    points = uncongeal_template_points(t, opt, inputs, mirrored, policy, label.template_points())
    return splat_label(images, points, label.colours, label.alpha, opt, blend_alg)
