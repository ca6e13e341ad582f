"""Evaluate PCK-Transfer of a trained spatial transformer on a keypoint dataset.

    python -m applications.pck --ckpt cub --real_data_path data/cub_val --num_pck_pairs 10000 \
        --transfer_both_ways
    python -m applications.pck --ckpt bicycle --real_data_path data/spair_bicycle_test
    torchrun --nproc_per_node=8 -m applications.pck ...

Protocols (chosen by what the dataset holds, see metrics.pck_transfer):
- SPair-71K: the dataset's fixed pairs, threshold alpha times the larger side
  of B's bounding box (pck_thresholds.pt), one way;
- CUB: --num_pck_pairs seeded random pairs, threshold alpha times the image
  size, usually --transfer_both_ways.

Unless --no_flip_inference, each pair is first mirror-matched (A, B, both or
neither mirrored, whichever gives the smoothest flows). Prints a table of
PCK-Transfer and the identity baseline and writes <out>/pck.json;
--vis_transfer also saves <out>/transfers/transfer_grid.png (A's keypoints
on A, top row; where they land in B, bottom row, with B's own keypoints as
rings) and <out>/transfers/congealed.png.
"""
import colorsys
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from applications.common.data import build_dataset
from applications.common.models import load_stn, stn_kwargs
from applications.common.output import make_grid_array, save_grid, save_json, save_png
from metrics.pck_transfer import bootstrap_pck, evaluate_pck_per_pair, format_pck_table, has_flow_stage, summarize
from options import base_eval_argparse, parse_eval_options
from utils.argparse_tools import has_option, report_option_problems
from utils.atomic_io import check_output_folder
from utils.distributed import cleanup, is_main_process, setup_distributed
from utils.errors import exit_on_user_error
from utils.image_io import tensor_to_uint8

NUM_TO_VISUALIZE = 8
MIN_PICTURE_SIZE = 256  # small images are enlarged (nearest neighbour) before drawing on them

# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'output_resolution': 'keypoints are compared in the pixels of the input images',
}


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


def pck_argparse():
    """Evaluation parser with the PCK-Transfer flags (finish with parse_eval_options)."""
    return add_pck_options(base_eval_argparse())


def option_problems(opt):
    """Readable problems with the PCK options (empty when fine)."""
    problems = []
    if any(not a > 0 for a in opt.alphas):
        problems.append(f'--alphas must all be greater than 0 (got {opt.alphas})')
    if opt.num_bootstrap < 0 or opt.num_bootstrap == 1:
        problems.append(f'--num_bootstrap must be 0 (off) or at least 2 (got {opt.num_bootstrap})')
    if opt.num_pck_pairs is not None and opt.num_pck_pairs < 1:
        problems.append(f'--num_pck_pairs must be at least 1 (got {opt.num_pck_pairs})')
    return problems


def keypoint_colours(count):
    """``count`` distinct RGB colours (0..255 tuples), evenly spaced in hue."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(count, 1), 0.85, 1.0))
            for i in range(count)]


def enlarge(image):
    """(3, S, S) image in [-1, 1] -> (PIL image enlarged to at least MIN_PICTURE_SIZE, scale)."""
    array = tensor_to_uint8(image)
    scale = max(1, MIN_PICTURE_SIZE // array.shape[0])
    picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    return picture, scale


def draw_markers(picture, scale, points, colours, radius, ring=False):
    """Draw filled dots (or rings) on an enlarged picture, in place.

    Args:
        points: (x, y) pixel positions in the original image, or None to skip one.
        colours: one RGB tuple per point.
        radius: marker radius in picture pixels.
    """
    pen = ImageDraw.Draw(picture)
    for point, colour in zip(points, colours):
        if point is None:
            continue
        # Pixel centres are at integer coordinates: the centre of enlarged pixel x is (x + 0.5) * scale.
        x, y = ((float(v) + 0.5) * scale for v in point)
        box = (x - radius, y - radius, x + radius, y + radius)
        if ring:
            pen.ellipse(box, outline=colour, width=2)
        else:
            pen.ellipse(box, fill=colour, outline=(0, 0, 0))


@torch.no_grad()
def visualize_transfers(t, dataset, out, device, flips, **forward_kwargs):
    """Save pictures of the first pairs' transfers (see the module docstring)."""
    count = min(NUM_TO_VISUALIZE, len(dataset))
    items = [dataset[i] for i in range(count)]
    imgs_a = torch.stack([item['imgsA'] for item in items]).to(device)
    imgs_b = torch.stack([item['imgsB'] for item in items]).to(device)
    kps_a = torch.stack([item['kpsA'] for item in items]).float().to(device)
    kps_b = torch.stack([item['kpsB'] for item in items]).float().to(device)
    vis_a = torch.stack([item['visA'] for item in items]).bool()
    vis_b = torch.stack([item['visB'] for item in items]).bool()
    num_points = kps_a.size(1)
    permutation = torch.as_tensor(getattr(dataset, 'permutation', torch.arange(num_points))).long()
    mirror_a = torch.zeros(count, dtype=torch.bool)
    mirror_b = torch.zeros(count, dtype=torch.bool)
    in_a, in_b, moved_a = imgs_a, imgs_b, kps_a
    if flips:
        in_a, in_b, moved_a, _, pick = t.match_flows(imgs_a, imgs_b, kps_a, kps_b, permutation.to(device),
                                                     **forward_kwargs)
        pick = pick.view(-1).cpu()
        mirror_a, mirror_b = pick % 2 == 1, pick >= 2
    landed = t.transfer_points(in_a, in_b, moved_a, **forward_kwargs).cpu()
    width = imgs_b.size(-1)
    landed[..., 0] = torch.where(mirror_b.view(-1, 1), width - 1 - landed[..., 0], landed[..., 0])
    colours = keypoint_colours(num_points)
    radius = max(3, MIN_PICTURE_SIZE // 64)
    pictures_a, pictures_b = [], []
    for i in range(count):
        picture, scale = enlarge(imgs_a[i])
        draw_markers(picture, scale, [kps_a[i, k].tolist() if vis_a[i, k] else None for k in range(num_points)],
                     colours, radius)
        pictures_a.append(np.asarray(picture))
        # Slot k of a mirrored A holds A's keypoint permutation[k]: colour it as that keypoint.
        sources = permutation.tolist() if mirror_a[i] else list(range(num_points))
        picture, scale = enlarge(imgs_b[i])
        draw_markers(picture, scale, [kps_b[i, k].tolist() if vis_b[i, k] else None for k in range(num_points)],
                     colours, radius + 2, ring=True)
        draw_markers(picture, scale, [landed[i, k].tolist() if vis_a[i, sources[k]] else None
                                      for k in range(num_points)], [colours[s] for s in sources], radius)
        pictures_b.append(np.asarray(picture))
    tiles = torch.from_numpy(np.stack(pictures_a + pictures_b)).permute(0, 3, 1, 2).float() / 127.5 - 1
    folder = os.path.join(out, 'transfers')
    grid_path = save_png(make_grid_array(tiles, nrow=count), os.path.join(folder, 'transfer_grid.png'))
    congealed = t(torch.cat([in_a, in_b]), output_resolution=imgs_b.size(-1), **forward_kwargs)
    congealed_path = save_grid(congealed, os.path.join(folder, 'congealed.png'), nrow=count)
    print(f'Saved keypoint transfer pictures to {grid_path} and {congealed_path}')


def bootstrap_table(stds, alphas):
    lines = ['| alpha | std of PCK-Transfer |', '|---|---|']
    lines += [f'| {float(a):g} | {100 * stds[float(a)]:.2f}% |' for a in alphas]
    return '\n'.join(lines)


@exit_on_user_error
def main(argv=None):
    parser = pck_argparse()
    opt = parse_eval_options(parser, argv, unread=UNREAD_OPTIONS)
    report_option_problems(parser, option_problems(opt))
    check_output_folder(opt.out)
    device, _, _ = setup_distributed(opt.device)
    try:
        dataset = build_dataset(opt, pck=True)
        t = load_stn(opt, device)
        flips = not opt.no_flip_inference and has_flow_stage(t)
        if not opt.no_flip_inference and not flips and is_main_process():
            print('note: no mirror matching: this transformer has no flow stage to compare')
        forward_kwargs = stn_kwargs(opt)
        if opt.vis_transfer and is_main_process():
            visualize_transfers(t, dataset, opt.out, device, flips, **forward_kwargs)
        per_pair = evaluate_pck_per_pair(t, dataset, opt.alphas, device, batch_size=opt.batch, flips=flips,
                                         transfer_both_ways=opt.transfer_both_ways,
                                         num_workers=opt.num_workers,
                                         progress=sys.stderr.isatty(), **forward_kwargs)
        result = summarize(per_pair, opt.alphas)
        stds = bootstrap_pck(per_pair, opt.alphas, opt.num_bootstrap, opt.seed) if opt.num_bootstrap else None
        if is_main_process():
            print(f"PCK-Transfer on {result['pairs']} pairs ({result['keypoints']} keypoints) "
                  f'of {opt.real_data_path}:')
            print(format_pck_table(result, opt.alphas))
            if stds is not None:
                print(f'Bootstrap over {opt.num_bootstrap} resamples of the pairs:')
                print(bootstrap_table(stds, opt.alphas))
            record = {'checkpoint': opt.ckpt, 'dataset': opt.real_data_path, 'alphas': list(opt.alphas),
                      'pck': {str(a): v for a, v in result['pck'].items()},
                      'baseline': {str(a): v for a, v in result['baseline'].items()},
                      'pairs': result['pairs'], 'keypoints': result['keypoints'],
                      'transfer_both_ways': opt.transfer_both_ways, 'flip_inference': flips}
            if stds is not None:
                record['bootstrap_std'] = {str(a): v for a, v in stds.items()}
            path = save_json(record, os.path.join(opt.out, 'pck.json'))
            print(f'Saved {path}')
    finally:
        cleanup()


if __name__ == '__main__':
    main()
