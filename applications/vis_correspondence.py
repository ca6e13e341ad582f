"""Videos of what a trained transformer does: images congealing, a label propagating, averages forming.

    python -m applications.vis_correspondence --ckpt cat --real_data_path data/lsun_cats --real_size 256 \\
        --label_path assets/masks/cat_mask.png --dset_indices 5 9 12 13 --vis_in_stages --n_mean 1000

Outputs (in --out):
- smoothly_congeal.mp4: the --dset_indices images (a grid) warped from
  themselves to the template, the warp eased in over --length frames (each
  stage in turn with --vis_in_stages; a mirroring stage first with
  --stage_flip, over --flip_length frames);
- with --label_path: smoothly_propagate.mp4, the label on the congealed
  images travelling back to where it belongs in each image (the congealing
  played backwards, the label following), and smooth_correspondence.mp4,
  congealing, a pause, the label fading in, then the propagation;
- with --n_mean N: smoothly_average.mp4, the average of N images congealing
  (with the label fading in when given), initial_average.png,
  stage<i>_average.png after each stage, and labeled_average.png.

How the label follows the warp: the label's template point q reads source
position s = G(q) from the final grid G. In a frame whose grid is G_t (an
interpolation between two stages' grids), the point is drawn where G_t
samples s: G_t(o) = s is solved for o by Newton's method (the grid's
Jacobian from finite differences), started from the previous frame's
answer. The mirroring stage is shown by warping the labelled images.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from applications.common.data import build_dataset
from applications.common.models import determine_flips, load_stn, select_cluster, stn_kwargs
from applications.common.output import make_grid_array, save_png
from applications.common.propagation import add_video_label_options, load_labels, splat_label
from applications.common.scores import add_flow_score_options, filter_by_flow_scores, flow_score_problems
from models.spatial_transformers import MipmapWarp
from models.spatial_transformers.geometry import identity_grid, resize_grid
from options import base_eval_argparse, parse_eval_options
from utils.argparse_tools import report_option_problems
from utils.atomic_io import check_output_folder
from utils.distributed import choose_device
from utils.errors import UserError, exit_on_user_error
from utils.image_io import tensor_to_uint8
from utils.video_io import VideoWriter, check_writable_folder

NEWTON_STEPS = 3

# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'num_pck_pairs': 'it picks keypoint pairs, which only applications.pck evaluates',
    'seed': 'nothing here is drawn at random',
}


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


def vis_correspondence_argparse():
    """Evaluation parser with the correspondence-video and flow-score flags (finish with parse_eval_options)."""
    return add_flow_score_options(add_vis_correspondence_options(base_eval_argparse()))


def option_problems(opt):
    problems = []
    for flag in ('length', 'flip_length', 'splat_batch', 'resolution'):
        if getattr(opt, flag) < 1 + (flag in ('length', 'flip_length')):
            problems.append(f'--{flag} must be at least {1 + (flag in ("length", "flip_length"))} '
                            f'(got {getattr(opt, flag)})')
    if not opt.sigma > 0:
        problems.append(f'--sigma must be greater than 0 (got {opt.sigma})')
    if not 0 <= opt.opacity <= 1:
        problems.append(f'--opacity must be in [0, 1] (got {opt.opacity})')
    if not opt.fps > 0:
        problems.append(f'--fps must be positive (got {opt.fps})')
    if opt.n_mean == 0 or opt.n_mean < -1:
        problems.append(f'--n_mean must be a positive number of images, or -1 for none (got {opt.n_mean})')
    if min(opt.dset_indices) < 0:
        problems.append('--dset_indices must not be negative')
    return problems


def ease(length, device):
    """Cosine ease-in-out from 0 to 1 over ``length`` frames: (length,)."""
    steps = torch.arange(length, device=device, dtype=torch.float32)
    return 0.5 * (1 - torch.cos(math.pi * steps / (length - 1)))


def mirror_grid(grid, mirrored):
    """Express grids of mirrored inputs in the original images' frame (x negated)."""
    flipped = grid.clone()
    flipped[..., 0] = -flipped[..., 0]
    return torch.where(mirrored.view(-1, 1, 1, 1), flipped, grid)


@torch.no_grad()
def stage_grids(t, opt, images, policy, classifier=None):
    """Grids (stages + 1 entries of (N, R, R, 2)) from the images themselves to the
    template, in the original images' frame; and the mirror decisions.

    Entry 0 is the identity (or, without --stage_flip, the mirror of mirrored
    images); with --stage_flip an identity comes first and then the mirror.
    With a cluster classifier (clustering models) it decides the mirrors for
    --cluster; otherwise the smoother flow does.
    """
    if classifier is not None:
        inputs, mirrored = classifier.run_flip_target(images, opt.cluster)
    else:
        inputs, mirrored = determine_flips(t, images, flip_inference=not opt.no_flip_inference, warp_policy=policy,
                                           **stn_kwargs(opt))
    _, grids = t(inputs, output_resolution=opt.output_resolution, return_intermediates=True, warp_policy=policy,
                 **stn_kwargs(opt))
    if not opt.vis_in_stages:
        grids = grids[-1:]
    size = opt.output_resolution
    grids = [mirror_grid(resize_grid(g, size), mirrored) for g in grids]
    identity = identity_grid(size, images.size(0), images.device)
    start = [identity, mirror_grid(identity, mirrored)] if opt.stage_flip else [mirror_grid(identity, mirrored)]
    return start + grids, mirrored


def transitions(opt, count):
    """(from, to, frames) for each animated stage of a list of ``count`` grids."""
    return [(i, i + 1, opt.flip_length if opt.stage_flip and i == 0 else opt.length) for i in range(count - 1)]


def sample_grid(field, points):
    """Bilinear lookup of a (N, R, R, C) field at normalised points (N, P, 2) -> (N, P, C)."""
    values = F.grid_sample(field.permute(0, 3, 1, 2), points.unsqueeze(2), mode='bilinear',
                           padding_mode='border', align_corners=False)
    return values.squeeze(3).permute(0, 2, 1)


def solve_positions(grid, targets, start):
    """Newton's method for G(o) = targets: (N, P, 2) normalised output positions."""
    size = grid.size(1)
    spacing = 2.0 / size
    d_dx = torch.gradient(grid, spacing=spacing, dim=2)[0]  # dG/dx (N, R, R, 2)
    d_dy = torch.gradient(grid, spacing=spacing, dim=1)[0]
    field = torch.cat([grid, d_dx, d_dy], dim=-1)
    o = start
    for _ in range(NEWTON_STEPS):
        values = sample_grid(field, o)
        residual = targets - values[..., :2]
        a, c = values[..., 2], values[..., 3]  # dGx/dx, dGy/dx
        b, d = values[..., 4], values[..., 5]  # dGx/dy, dGy/dy
        det = a * d - b * c
        det = torch.where(det.abs() < 1e-6, torch.full_like(det, 1e-6), det)
        step_x = (d * residual[..., 0] - b * residual[..., 1]) / det
        step_y = (-c * residual[..., 0] + a * residual[..., 1]) / det
        o = (o + torch.stack([step_x, step_y], dim=-1)).clamp(-1.5, 1.5)
    return o


def to_pixels(points, size):
    return (points + 1) * size / 2 - 0.5


@torch.no_grad()
def congeal_and_propagate(t, opt, images, policy, labels, warper, folder, classifier=None):
    """smoothly_congeal.mp4, and with a label smoothly_propagate.mp4 and smooth_correspondence.mp4."""
    grids, mirrored = stage_grids(t, opt, images, policy, classifier)
    size, n = opt.output_resolution, images.size(0)
    nrow = max(1, int(math.sqrt(n)))
    steps = transitions(opt, len(grids))
    chunk = max(1, opt.splat_batch // n)  # frames warped (and splatted) at once
    paths = {name: os.path.join(folder, name) for name in
             ('smoothly_congeal.mp4', 'smoothly_propagate.mp4', 'smooth_correspondence.mp4')}
    label = labels[0] if labels else None
    with VideoWriter(paths['smoothly_congeal.mp4'], opt.fps) as congeal_video, \
            (VideoWriter(paths['smooth_correspondence.mp4'], opt.fps) if label else _Null()) as both:
        last = None
        for first, second, length in tqdm(steps, desc='congealing', file=sys.stderr):
            alphas = ease(length, images.device)
            for begin in range(0, length, chunk):
                a = alphas[begin:begin + chunk].view(-1, 1, 1, 1, 1)
                frames = torch.lerp(grids[first].unsqueeze(0), grids[second].unsqueeze(0), a)  # (f, N, R, R, 2)
                warped = warper(images.repeat(frames.size(0), 1, 1, 1), frames.reshape(-1, size, size, 2))
                for frame in warped.view(frames.size(0), n, 3, size, size):
                    array = make_grid_array(frame, nrow=nrow)
                    congeal_video.write(array)
                    both.write(array)
                    last = frame
        if label is None:
            return
        # The label on the congealed images, faded in after a pause.
        template = label.template_points().unsqueeze(0).expand(n, -1, -1)
        colours, alpha = label.colours, label.alpha
        labelled = splat_label(last, to_pixels(template, size), colours, alpha, opt)
        pause = max(2, opt.length // 4)
        for _ in range(pause):
            both.write(make_grid_array(last, nrow=nrow))
        for a in ease(pause, images.device):
            both.write(make_grid_array(torch.lerp(last, labelled, a), nrow=nrow))
        # Back from the template to the images, the label following the warp.
        targets = sample_grid(grids[-1], template)  # source positions of the label points
        position = template
        with VideoWriter(paths['smoothly_propagate.mp4'], opt.fps) as propagate_video:
            for first, second, length in tqdm(steps[::-1], desc='propagating', file=sys.stderr):
                flip_stage = opt.stage_flip and first == 0
                if flip_stage:  # label drawn on the images, mirrored with them
                    drawn = splat_label(warper(images, grids[0]), to_pixels(targets, size), colours, alpha, opt)
                for a in ease(length, images.device).flip(0):
                    grid = torch.lerp(grids[first], grids[second], a)
                    if flip_stage:  # ``drawn`` is in the images' own frame, as the images are
                        frame = warper(drawn, grid)
                    else:
                        position = solve_positions(grid, targets, position)
                        frame = splat_label(warper(images, grid), to_pixels(position, size), colours, alpha, opt)
                    array = make_grid_array(frame, nrow=nrow)
                    propagate_video.write(array)
                    both.write(array)
            for _ in range(max(1, opt.length // 48)):
                both.write(array)
    print(f"Saved {', '.join(paths.values())}")


class _Null:
    """A stand-in writer that ignores frames (no label: no correspondence video)."""

    def write(self, frames):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def average_videos(t, opt, dataset, policy_for, labels, warper, folder, device, classifier=None):
    """smoothly_average.mp4 and the average PNGs from the first --n_mean images."""
    count = min(opt.n_mean, len(dataset))
    size = opt.output_resolution
    totals, steps = None, None
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(range(count))), batch_size=opt.batch,
                                         shuffle=False, num_workers=opt.num_workers)
    for images in tqdm(loader, desc='averages', file=sys.stderr):
        images = images.to(device)
        grids, _ = stage_grids(t, opt, images, policy_for(images), classifier)
        steps = transitions(opt, len(grids))
        frames_total = sum(length for _, _, length in steps)
        if totals is None:
            totals = torch.zeros(frames_total, 3, size, size, device=device)
        index = 0
        for first, second, length in steps:
            for a in ease(length, device):
                totals[index] += warper(images, torch.lerp(grids[first], grids[second], a)).sum(0)
                index += 1
    averages = totals / count
    save_png(tensor_to_uint8(averages[0], value_range=None), os.path.join(folder, 'initial_average.png'))
    end = 0
    for stage, (_, _, length) in enumerate(steps):
        end += length
        save_png(tensor_to_uint8(averages[end - 1], value_range=None), os.path.join(folder, f'stage{stage}_average.png'))
    lo = averages.amin(dim=(1, 2, 3), keepdim=True)
    hi = averages.amax(dim=(1, 2, 3), keepdim=True)
    stretched = (averages - lo) / (hi - lo).clamp_min(1e-5) * 2 - 1
    with VideoWriter(os.path.join(folder, 'smoothly_average.mp4'), opt.fps) as video:
        for frame in stretched:
            video.write(tensor_to_uint8(frame))
        if labels:
            label = labels[0]
            last = stretched[-1:]
            labelled = splat_label(last, label.pixels_at(size).unsqueeze(0), label.colours, label.alpha, opt)
            save_png(tensor_to_uint8(labelled[0]), os.path.join(folder, 'labeled_average.png'))
            pause = max(2, opt.length // 4)
            for _ in range(pause):
                video.write(tensor_to_uint8(last[0]))
            for a in ease(pause, device):
                video.write(tensor_to_uint8(torch.lerp(last, labelled, a)[0]))
            for _ in range(max(1, opt.length // 48)):
                video.write(tensor_to_uint8(labelled[0]))
    print(f"Saved the average of {count} images to {os.path.join(folder, 'smoothly_average.mp4')}")


@exit_on_user_error
def main(argv=None):
    parser = vis_correspondence_argparse()
    opt = parse_eval_options(parser, argv, unread=UNREAD_OPTIONS)
    report_option_problems(parser, option_problems(opt) + flow_score_problems(opt))
    check_output_folder(opt.out)
    device = choose_device(opt.device)
    dataset, _ = filter_by_flow_scores(opt, build_dataset(opt))
    t, classifier = load_stn(opt, device, with_classifier=True)
    if opt.num_heads > 1 and (opt.cluster is None or not 0 <= opt.cluster < opt.num_heads):
        raise UserError(f'this model has {opt.num_heads} clusters: choose one with --cluster '
                        f'(0 to {opt.num_heads - 1})')
    if opt.num_heads == 1 and opt.cluster not in (None, 0):
        raise UserError(f'--cluster {opt.cluster}: this model has a single cluster (drop --cluster)')
    if opt.num_heads == 1:
        classifier = None  # a one-head model's mirrors are decided by flow smoothness, as the original
    dataset, _ = select_cluster(opt, dataset, classifier, device)
    bad = [i for i in opt.dset_indices if i >= len(dataset)]
    if bad:
        raise UserError(f'--dset_indices {bad[0]} is out of range: the dataset has {len(dataset)} images')
    cluster = opt.cluster if opt.num_heads > 1 else None
    labels = load_labels(opt, [cluster], device) if opt.label_path else []
    check_writable_folder(opt.out)

    def policy_for(images):
        if cluster is None:
            return 'cartesian'
        return torch.full((images.size(0),), cluster, dtype=torch.long, device=images.device)

    warper = MipmapWarp(3.5).to(device)
    images = torch.stack([dataset[i] for i in opt.dset_indices]).to(device)
    congeal_and_propagate(t, opt, images, policy_for(images), labels, warper, opt.out, classifier)
    if opt.n_mean > 0:
        average_videos(t, opt, dataset, policy_for, labels, warper, opt.out, device, classifier)


if __name__ == '__main__':
    main()
