"""Dense correspondence between two images, through the congealed template.

    python -m applications.correspond --ckpt cat --source a.png --target b.png --out corr \\
        [--points points.json] [--cluster K]

The trained transformer is used as a flow estimator: every pixel of the
source is carried to the template by the source's warp and on to the target
by the target's (see applications.common.correspondence: mirrors chosen per
pair as PCK-Transfer chooses them; a clustering model sends both images to
--cluster, else to the head its classifier picks for the source). Both
images must be square (any size; they are resized to --real_size for the
network, and positions are given in each image's own pixels).

Outputs, in --out:
- flow.npy: float32 (H, W, 2): at [y, x], the position (x', y') in the
  target's pixels of source pixel (x, y) (H, W: the source's size);
- flow.png: the source, the target, the target resampled at the flow (the
  target seen from the source: where the flow is right it looks like the
  source) and the displacement colour-coded (hue: direction);
- with --points (a JSON list of [x, y] source pixels, or a .npy of shape
  (P, 2)): transferred_points.json, {"source": [[x, y], ...], "target":
  [[x', y'], ...], "mirrored": "neither" | "source" | "target" | "both"}.
Every file is written atomically; a refused input writes nothing.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from applications.common.correspondence import dense_flow, transfer_points
from applications.common.models import check_cluster, load_stn
from applications.common.output import make_grid_array, save_json, save_png
from options import base_eval_argparse, parse_eval_options
from utils.argparse_tools import report_option_problems
from utils.atomic_io import atomic_write, check_output_folder
from utils.distributed import choose_device
from utils.errors import UserError, exit_on_user_error
from utils.flow_vis import flow_to_rgb
from utils.image_io import array_to_tensor, read_image_file

MIRRORED = ('neither', 'source', 'target', 'both')

# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'real_data_path': 'the images are --source and --target',
    'dataset_mode': 'the images are --source and --target',
    'num_workers': 'two images are read directly',
    'batch': 'one pair is processed',
    'num_pck_pairs': 'it picks keypoint pairs, which only applications.pck evaluates',
    'seed': 'nothing here is drawn at random',
    'output_resolution': "the flow is given in the images' own pixels",
}


def correspond_argparse():
    """Evaluation parser with the pair flags (finish with parse_eval_options)."""
    parser = base_eval_argparse()
    parser.description = 'Dense correspondence from one image to another through the congealed template'
    group = parser.add_argument_group('correspondence')
    group.add_argument('--source', type=str, required=True, help='the image whose pixels are carried (A)')
    group.add_argument('--target', type=str, required=True, help='the image they are carried to (B)')
    group.add_argument('--points', type=str, default=None,
                       help='source pixels to transfer: a JSON list of [x, y] or a .npy array of shape (P, 2)')
    group.add_argument('--cluster', type=int, default=None,
                       help="clustering models: the head both images go through (default: the one the "
                            "checkpoint's cluster classifier picks for the source)")
    parser.set_defaults(out='correspondence')
    return parser


def read_square_image(path, flag):
    """uint8 (S, S, 3) of an image file; UserError when missing, unreadable or not square."""
    if not os.path.isfile(path):
        raise UserError(f"{flag} '{path}' does not exist")
    try:
        array = read_image_file(path)
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{flag} '{path}' could not be read as an image ({' '.join(str(e).split())})") from None
    height, width = array.shape[:2]
    if height != width:
        raise UserError(f"{flag} '{path}' is {width} x {height} pixels; the transformer aligns square images: "
                        f'crop or pad it to a square first (e.g. prepare_data.py --pad border)')
    return array


def read_points(path, size):
    """(P, 2) float source pixels from a JSON list or a .npy file; UserError when malformed."""
    if not os.path.isfile(path):
        raise UserError(f"--points '{path}' does not exist")
    try:
        if path.endswith('.npy'):
            points = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding='utf-8') as f:
                points = np.asarray(json.load(f), dtype=np.float64)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"--points '{path}' could not be read ({' '.join(str(e).split())[:200]}); give a "
                        f'JSON list of [x, y] pairs or a .npy array of shape (P, 2)') from None
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0 or not np.isfinite(points).all():
        raise UserError(f"--points '{path}' must hold P >= 1 finite [x, y] pairs, found shape {points.shape}")
    outside = (points < -0.5) | (points > size - 0.5)
    if outside.any():
        raise UserError(f"--points '{path}': {tuple(points[outside.any(1)][0])} lies outside the "
                        f'{size} x {size} source image')
    return torch.from_numpy(points.astype(np.float32))


def to_network(array, size, device):
    """uint8 (H, H, 3) -> (1, 3, size, size) in [-1, 1] (Lanczos-resized when H differs)."""
    if array.shape[0] != size:
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.LANCZOS))
    return array_to_tensor(array).unsqueeze(0).to(device)


def rescale(points, from_size, to_size):
    """Pixel positions (pixel centres at integers) from a from_size image to a to_size one."""
    return (points + 0.5) * (to_size / from_size) - 0.5


def flow_picture(source, target, flow):
    """(H, 4W', 3) uint8: source, target, target resampled at the flow, displacement colours."""
    size = source.shape[0]
    src = array_to_tensor(source).unsqueeze(0)
    tgt = array_to_tensor(np.asarray(Image.fromarray(target).resize((size, size), Image.LANCZOS)))
    tgt = tgt.unsqueeze(0)
    scale = target.shape[0] / size
    positions = torch.from_numpy(flow).unsqueeze(0) / scale  # target pixels at the source's size
    grid = (2 * positions + 1) / size - 1
    resampled = F.grid_sample(tgt, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    identity = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing='xy'), -1).float()
    colours = flow_to_rgb(positions - identity.unsqueeze(0)) * 2 - 1
    return make_grid_array(torch.cat([src, tgt, resampled, colours]), nrow=4, padding=2)


@exit_on_user_error
def main(argv=None):
    parser = correspond_argparse()
    opt = parse_eval_options(parser, argv, unread=UNREAD_OPTIONS)
    report_option_problems(parser, [])
    check_output_folder(opt.out)
    source = read_square_image(opt.source, '--source')
    target = read_square_image(opt.target, '--target')
    points = read_points(opt.points, source.shape[0]) if opt.points else None
    device = choose_device(opt.device)
    t, classifier = load_stn(opt, device, with_classifier=True)
    classifier = classifier if opt.num_heads > 1 else None
    check_cluster(opt, classifier)
    if not getattr(t, 'is_flow', False) and not opt.no_flip_inference:
        print('note: no mirror matching: this transformer has no flow stage to compare')
    size = opt.real_size
    image_a, image_b = to_network(source, size, device), to_network(target, size, device)
    flow, pick = dense_flow(t, opt, image_a, image_b, classifier)
    # Back to the images' own pixels: sample the flow at each source pixel, scale to the target.
    src_size, tgt_size = source.shape[0], target.shape[0]
    flow = rescale(flow, size, tgt_size)
    if src_size != size:
        centres = rescale(torch.arange(src_size, dtype=torch.float32), src_size, size)
        grid = (2 * torch.stack(torch.meshgrid(centres, centres, indexing='xy'), -1) + 1) / size - 1
        flow = F.grid_sample(flow.permute(0, 3, 1, 2), grid.unsqueeze(0).to(flow), mode='bilinear',
                             padding_mode='border', align_corners=False).permute(0, 2, 3, 1)
    flow = flow[0].cpu().numpy().astype(np.float32)
    os.makedirs(opt.out, exist_ok=True)
    atomic_write(os.path.join(opt.out, 'flow.npy'), lambda f: np.save(f, flow))
    save_png(flow_picture(source, target, flow), os.path.join(opt.out, 'flow.png'))
    mirrored = MIRRORED[int(pick[0])]
    if points is not None:
        landed, _ = transfer_points(t, opt, image_a, image_b,
                                    rescale(points, src_size, size).unsqueeze(0).to(device), classifier)
        landed = rescale(landed[0].cpu(), size, tgt_size)
        save_json({'source': points.tolist(), 'target': landed.tolist(), 'mirrored': mirrored},
                  os.path.join(opt.out, 'transferred_points.json'))
    print(f'Dense flow from {opt.source} to {opt.target} (mirrored: {mirrored}) in {opt.out}')


if __name__ == '__main__':
    main()
