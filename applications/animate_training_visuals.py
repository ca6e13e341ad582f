"""Turn a training run's image grids into videos: one mp4 per kind of visual.

    python -m applications.animate_training_visuals --exps demo --results results --fps 60

train.py saves every visual as ``<results>/<exp>/<name>_<iteration>.png``
(7-digit iteration). Each ``name`` becomes ``<out>/<exp>/<name>.mp4``, its
frames in iteration order (all names found, or those given with --visuals).
Videos are H.264, written under a temporary name and renamed when complete.
"""
import argparse
import glob
import os
import re
import sys

import numpy as np
from tqdm import tqdm

from utils.errors import UserError, exit_on_user_error
from utils.image_io import read_image_file
from utils.video_io import VideoWriter, check_writable_folder

FRAME_NAME = re.compile(r'^(?P<name>.+)_(?P<step>\d{7})\.png$')


def build_parser():
    parser = argparse.ArgumentParser(description='Make mp4 videos from the image grids of training runs',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--exps', nargs='+', required=True, help='names of the experiments (folders in --results)')
    parser.add_argument('--results', type=str, default='results', help='folder holding the experiments')
    parser.add_argument('--visuals', nargs='+', default=None,
                        help='names of the visuals to animate (default: every one found, e.g. '
                             'congealed_real, mean_congealed_real, flow_real)')
    parser.add_argument('--fps', type=float, default=60, help='frames per second of the videos')
    parser.add_argument('--out', type=str, default='visuals', help='videos go to <out>/<exp>/<visual>.mp4')
    return parser


def find_series(folder):
    """{visual name: [png paths in iteration order]} of a run's folder."""
    series = {}
    for path in glob.glob(os.path.join(glob.escape(folder), '*.png')):
        match = FRAME_NAME.match(os.path.basename(path))
        if match:
            series.setdefault(match['name'], []).append((int(match['step']), path))
    return {name: [p for _, p in sorted(items)] for name, items in series.items()}


def animate(files, path, fps):
    """Encode the PNGs ``files`` into ``path``; frames of another size than the first are padded or cropped."""
    with VideoWriter(path, fps) as writer:
        first = None
        for file in tqdm(files, desc=os.path.basename(path), unit='frame', file=sys.stderr):
            frame = read_image_file(file)
            if first is None:
                first = frame.shape
            elif frame.shape != first:  # a grid of another size: fit it onto the first one's canvas
                canvas = np.zeros(first, dtype=np.uint8)
                h, w = min(first[0], frame.shape[0]), min(first[1], frame.shape[1])
                canvas[:h, :w] = frame[:h, :w]
                frame = canvas
            writer.write(frame)
    return path


@exit_on_user_error
def main(argv=None):
    opt = build_parser().parse_args(argv)
    if not opt.fps > 0:
        raise UserError(f'--fps must be positive (got {opt.fps})')
    written = 0
    for exp in opt.exps:
        folder = os.path.join(opt.results, exp)
        if not os.path.isdir(folder):
            raise UserError(f"experiment folder '{folder}' does not exist; check --exps and --results")
        series = find_series(folder)
        names = opt.visuals or sorted(series)
        missing = [name for name in names if name not in series]
        if missing:
            raise UserError(f"no '{missing[0]}_<iteration>.png' images in '{folder}'; found: "
                            f"{', '.join(sorted(series)) or 'none'}")
        out = check_writable_folder(os.path.join(opt.out, exp))
        for name in names:
            print(f'{exp}/{name}: {len(series[name])} frames -> {animate(series[name], os.path.join(out, name + ".mp4"), opt.fps)}')
            written += 1
    if written == 0:
        raise UserError('no visuals found to animate')
    return 0


if __name__ == '__main__':
    main()
