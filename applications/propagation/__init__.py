"""Carrying a label drawn in congealed space to images: the one implementation
that ``applications.propagate_to_images`` and ``applications.edit_studio`` share.

A label is an image on the template (the average congealed image): an RGBA
edit (pixels with alpha > 0 belong to it; with ``objects`` their own colours
are carried) or a plain black-and-white mask (white belongs to it; its pixels
are coloured along a colour map). Each label pixel is sent through the
inverse warp (a lookup in the transformer's sampling grid) to where it sits
in an image, and splatted there with a Gaussian (sigma) blended at opacity.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from applications import cluster_policy, determine_flips, stn_kwargs
from ops.splat import splat_points
from utils.errors import UserError
from utils.image_io import image_has_alpha

# The 'plasma' colour map at 0, 1/4, 1/2, 3/4 and 1, interpolated linearly in between.
PLASMA_ANCHORS = ((13, 8, 135), (126, 3, 168), (204, 71, 120), (248, 149, 64), (240, 249, 33))


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


def colour_map(count, device):
    """``count`` colours along the plasma map, (count, 3) in [-1, 1]."""
    anchors = torch.tensor(PLASMA_ANCHORS, dtype=torch.float32, device=device) / 127.5 - 1
    position = torch.linspace(0, len(PLASMA_ANCHORS) - 1, count, device=device)
    low = position.floor().long().clamp(max=len(PLASMA_ANCHORS) - 2)
    frac = (position - low).unsqueeze(1)
    return anchors[low] * (1 - frac) + anchors[low + 1] * frac


def label_from_rgba(rgba, has_alpha, resolution, objects, device, name='label'):
    """List the pixels of a congealed-space label given as an RGBA array.

    Args:
        rgba: float (H, W, 4) numpy array in [0, 1].
        has_alpha: the alpha channel decides membership (alpha > 0); when
            False, pixels brighter than mid-grey belong to the label.
        resolution: the label is resampled (bilinearly) to this size first.
        objects: use the label's own RGB colours; otherwise the pixels are
            coloured along the plasma map in raster order.
        device: where the tensors go.
        name: how error messages call the label.
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
        colours = colour_map(points.size(0), device)
        alpha = torch.ones_like(alpha)
    return points, colours, alpha


def load_label(path, resolution, objects, device):
    """Read a congealed-space label file and list its pixels (see ``label_from_rgba``).

    Raises:
        UserError: missing or unreadable file, or an empty label.
    """
    if not os.path.isfile(path):
        raise UserError(f"label '{path}' does not exist; check --label_path")
    try:
        with Image.open(path) as image:
            has_alpha = image_has_alpha(image)
            rgba = np.asarray(image.convert('RGBA'), dtype=np.float32) / 255.0
    except OSError as e:
        raise UserError(f"label '{path}' could not be read as an image ({e})") from None
    return label_from_rgba(rgba, has_alpha, resolution, objects, device, name=f"label '{path}'")


def label_pixels_to_template(points, resolution):
    """Label pixels at ``resolution`` -> normalised template positions (align_corners=False)."""
    return (2 * points + 1) / resolution - 1


def label_pixels_to_size(points, resolution, size):
    """Label pixels at ``resolution`` -> pixel coordinates of a ``size`` image of the template."""
    return (points + 0.5) * (size / resolution) - 0.5


@torch.no_grad()
def congeal(t, opt, images):
    """Flip decision and alignment of a batch.

    Args:
        t: the spatial transformer.
        opt: evaluation options (cluster, no_flip_inference, output_resolution, ...).
        images: (N, 3, S, S) in [-1, 1].
    Returns:
        (inputs mirrored where chosen, mirrored (N,) bool, warp policy,
        congealed (N, 3, R, R) with R = opt.output_resolution).
    """
    policy = cluster_policy(opt, images.size(0), images.device)
    inputs, mirrored = determine_flips(t, images, flip_inference=not opt.no_flip_inference,
                                       warp_policy=policy, **stn_kwargs(opt))
    congealed = t(inputs, output_resolution=opt.output_resolution, warp_policy=policy, **stn_kwargs(opt))
    return inputs, mirrored, policy, congealed


@torch.no_grad()
def propagate(t, opt, images, inputs, mirrored, policy, label):
    """Splat the label onto ``images`` (N, 3, S, S) through the inverse warps.

    Args:
        t, opt: the transformer and options (sigma, opacity, padding, iters).
        images: (N, 3, S, S) in [-1, 1], as given (not mirrored).
        inputs, mirrored, policy: from ``congeal``.
        label: (template points (P, 2) normalised, colours (P, 3), alpha (P, 1)).
    Returns:
        (N, 3, S, S) images with the label blended in, in [-1, 1].
    """
    template, colours, alpha = label
    n, size = images.size(0), images.size(-1)
    template = template.unsqueeze(0).expand(n, -1, -1)
    points = t.uncongeal_points(inputs, template, normalize_input_points=False, unnormalize_output_points=True,
                                warp_policy=policy, **stn_kwargs(opt))
    # Points found in a mirrored input belong at the mirrored x of the original image.
    points = points.clone()
    points[..., 0] = torch.where(mirrored.view(n, 1), size - 1 - points[..., 0], points[..., 0])
    return splat_points(images, points, sigma=opt.sigma, opacity=opt.opacity, colors=colours.unsqueeze(0),
                        alpha_channel=alpha.unsqueeze(0))


@torch.no_grad()
def annotate_template(template, label_points, label_colours, label_alpha, resolution, opt):
    """Draw the label on template images, as it will be carried.

    Args:
        template: (N, 3, R, R) images of the template in [-1, 1].
        label_points: (P, 2) label pixels at ``resolution``; colours (P, 3), alpha (P, 1).
        opt: sigma and opacity.
    Returns:
        (N, 3, R, R) annotated images.
    """
    points = label_pixels_to_size(label_points, resolution, template.size(-1)).unsqueeze(0)
    points = points.expand(template.size(0), -1, -1)
    return splat_points(template, points, sigma=opt.sigma, opacity=opt.opacity,
                        colors=label_colours.unsqueeze(0), alpha_channel=label_alpha.unsqueeze(0))

