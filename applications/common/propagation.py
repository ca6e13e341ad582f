"""Carrying a label drawn in congealed space to images: the helpers every application shares.

(Not runnable: imported by propagate_to_images, mixed_reality,
vis_correspondence and the edit studio, with the label flags they share.)

A label is an image in the template's frame: an RGBA edit (pixels with alpha
> 0) or a black-and-white mask. Its pixels become points; each point is sent
through the transformer's inverse warp (a lookup in the sampling grid) to
where it sits in an image, and splatted there (ops.splat.splat_points) with
its colour: the label's own with ``--objects``, otherwise a colour scale
(utils.colour_scales; one scale per cluster of a clustering model).
"""
import os
import re
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from applications.common.models import cluster_policy, decide_heads, stn_kwargs
from applications.common.scores import add_flow_score_options
from ops.splat import splat_points
from options import base_eval_argparse
from utils.colour_scales import scale_colours, scale_for_cluster
from utils.errors import UserError
from utils.image_io import image_has_alpha


# ----------------------------------------------------------------------------- flags

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


def propagation_argparse():
    """Evaluation parser with the propagation and flow-score flags (finish with parse_eval_options)."""
    return add_flow_score_options(add_propagation_options(base_eval_argparse()))


# ----------------------------------------------------------------------------- labels


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


def label_option_problems(opt):
    """Readable problems with the flags every label-propagating application has
    (--sigma, --opacity, --resolution); empty when fine."""
    problems = []
    if not opt.sigma > 0:
        problems.append(f'--sigma must be greater than 0 (got {opt.sigma})')
    if not 0 <= opt.opacity <= 1:
        problems.append(f'--opacity must be in [0, 1] (got {opt.opacity})')
    if opt.resolution < 1:
        problems.append(f'--resolution must be at least 1 (got {opt.resolution})')
    return problems


def option_problems(opt):
    """Readable problems with the propagation options (empty when fine)."""
    problems = label_option_problems(opt)
    if opt.n_mean == 0 or opt.n_mean < -1:
        problems.append(f'--n_mean must be a positive number of images, or -1 for none (got {opt.n_mean})')
    if opt.dset_indices is not None and min(opt.dset_indices) < 0:
        problems.append('--dset_indices must not be negative')
    return problems


def square_label_problem(name, width, height):
    """The message refusing a non-square label (it would be stretched onto the square template)."""
    side = max(width, height)
    return (f'{name} is {width} x {height} pixels, but a label is drawn on the square congealed template; '
            f'make it square (e.g. pad it to {side} x {side}, or draw it on the average image)')


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
        UserError: a non-square or empty label.
    """
    if rgba.shape[0] != rgba.shape[1]:
        raise UserError(square_label_problem(name, rgba.shape[1], rgba.shape[0]))
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


class Alignment(NamedTuple):
    """A batch's flip decision and alignment, enough to propagate any label without the network.

    inputs: (N, 3, S, S) images as the transformer saw them (mirrored where
    ``mirrored`` (N,) bool says); policy: the warp policy; congealed:
    (N, 3, R, R) aligned images; warp: the transformer's warp of ``inputs``
    (``t.compute_warp``: a flow-size grid, or similarity matrices).
    """
    inputs: torch.Tensor
    mirrored: torch.Tensor
    policy: object
    congealed: torch.Tensor
    warp: torch.Tensor


@torch.no_grad()
def align(t, opt, images, cluster=None, output_resolution=None, classifier=None):
    """Flip decision, alignment and warp of a batch, from as few network passes as the maths allows.

    With flip inference the transformer sees each image and its mirror (two
    passes); the kept side's grid is the warp, and the congealed images are
    sampled through it. Otherwise one pass gives both. The results equal
    ``determine_flips`` followed by separate congealing and point-mapping passes.

    Args:
        images: (N, 3, S, S) in [-1, 1].
        cluster: head of a clustering model (default ``--cluster``).
        output_resolution: side R of the congealed images (default --output_resolution).
        classifier: a clustering model's cluster classifier; it then decides
            each image's mirror (and, without a cluster, its head; see
            ``applications.decide_heads``).
    Returns:
        an Alignment.
    """
    resolution = output_resolution or opt.output_resolution
    kwargs = stn_kwargs(opt)
    policy = _policy(opt, images, cluster) if classifier is None else None
    if classifier is not None:
        chosen = cluster if cluster is not None else getattr(opt, 'cluster', None)
        inputs, mirrored, _, policy = decide_heads(opt, t, classifier, images, chosen)
        warp, congealed = t.compute_warp(inputs, output_resolution=resolution, return_congealed_img=True,
                                         warp_policy=policy, **kwargs)
    elif not opt.no_flip_inference and t.is_flow:
        _, grid, inputs, keep = t.forward_with_flip(images, return_warp=True, return_inputs=True,
                                                    return_flip_indices=True, warp_policy=policy, **kwargs)
        # forward_with_flip expresses a kept mirror's grid for the unmirrored image (x negated);
        # negating back (exact) gives the grid of the input the transformer saw.
        warp = torch.where(keep, grid * grid.new_tensor([-1.0, 1.0]), grid)
        congealed = t.warp_images(inputs, warp, resolution, opt.padding_mode)
        mirrored = keep.reshape(-1).bool()
    else:
        inputs = images
        mirrored = torch.zeros(images.size(0), dtype=torch.bool, device=images.device)
        warp, congealed = t.compute_warp(inputs, output_resolution=resolution, return_congealed_img=True,
                                         warp_policy=policy, **kwargs)
    return Alignment(inputs, mirrored, policy, congealed, warp)


def _policy(opt, images, cluster):
    if cluster is None:
        return cluster_policy(opt, images.size(0), images.device)
    return torch.full((images.size(0),), int(cluster), dtype=torch.long, device=images.device)


def points_through_warp(t, warp, mirrored, template, size, output_resolution=None):
    """Where normalised template points (P, 2) land in each image, through kept warps (no network pass).

    Args:
        warp: an Alignment's warp (rows N).
        mirrored: (N,) bool, images the transformer saw mirrored.
        size: side S of the images.
        output_resolution: the grid is read at this resolution (default
            flow_size), as ``t.uncongeal_points``.
    Returns:
        (N, P, 2) pixels of the *original* (unmirrored) images.
    """
    n = warp.size(0)
    points = t.uncongeal_points_with_warp(warp, template.unsqueeze(0).expand(n, -1, -1), size,
                                          output_resolution=output_resolution)
    # Points found in a mirrored input belong at the mirrored x of the original image.
    points = points.clone()
    points[..., 0] = torch.where(mirrored.view(n, 1), size - 1 - points[..., 0], points[..., 0])
    return points


@torch.no_grad()
def uncongeal_template_points(t, opt, inputs, mirrored, policy, template, output_resolution=None):
    """Where normalised template points (P, 2) land in each image (one network pass).

    Args:
        inputs: (N, 3, S, S) images as the transformer saw them (mirrored where
            ``mirrored`` says).
        output_resolution: also return the congealed images at this size (the
            grid is then read at it too).
    Returns:
        points (N, P, 2) pixels of the *original* (unmirrored) images, and the
        congealed images (N, 3, R, R) when ``output_resolution`` is given.
    """
    result = t.compute_warp(inputs, output_resolution=output_resolution, warp_policy=policy,
                            return_congealed_img=output_resolution is not None, **stn_kwargs(opt))
    warp, congealed = result if output_resolution is not None else (result, None)
    points = points_through_warp(t, warp, mirrored, template, inputs.size(-1), output_resolution)
    return (points, congealed) if output_resolution is not None else points


def splat_label(images, points, colours, alpha, opt, blend_alg='alpha'):
    """Splat label points (N, P, 2) with colours (P, 3) and alpha (P, 1) onto (N, 3, H, W) images."""
    return splat_points(images, points, sigma=opt.sigma, opacity=opt.opacity, colors=colours.unsqueeze(0),
                        alpha_channel=alpha.unsqueeze(0), blend_alg=blend_alg)


@torch.no_grad()
def propagate(t, opt, images, inputs, mirrored, policy, label, blend_alg='alpha'):
    """Splat ``label`` (a Label) onto ``images`` (N, 3, S, S) through the inverse warps (one network pass)."""
    points = uncongeal_template_points(t, opt, inputs, mirrored, policy, label.template_points())
    return splat_label(images, points, label.colours, label.alpha, opt, blend_alg)


@torch.no_grad()
def propagate_aligned(t, opt, images, alignment, label, blend_alg='alpha'):
    """``propagate`` through an Alignment's kept warp: only the splat runs, not the network."""
    points = points_through_warp(t, alignment.warp, alignment.mirrored, label.template_points(), images.size(-1))
    return splat_label(images, points, label.colours, label.alpha, opt, blend_alg)
