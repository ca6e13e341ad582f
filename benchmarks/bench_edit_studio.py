"""Edit studio preview latency: seconds from the request to the propagated images.

    python -m benchmarks.bench_edit_studio                  # N = 16 at 256 px, CPU (and CUDA when present)
    python -m benchmarks.bench_edit_studio --counts 1 16 --reps 3 --devices cpu

Builds, in a temporary folder, an LMDB of random 256-pixel images and a
randomly initialised transformer of the released models' size (similarity
then flow, flow_size 128, channel multiplier 0.5: the cost does not depend on
the weights), then times ``StudioEngine.preview`` for each number of images: on images
not seen before (flip decision, congealing, propagation, PNG encoding), and
again on the same images with another label (the alignment is kept, so only
the propagation runs). Medians over --reps random selections, after one
warm-up. Prints a markdown table.
"""
import argparse
import os
import tempfile
import time

import numpy as np
import torch

from applications.studio.launch import build_engine
from datasets.lmdb_dataset import write_lmdb_dataset
from models import get_stn
from utils.checkpoint import save_checkpoint
from utils.image_io import encode_image


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=256, help='image resolution (--real_size)')
    parser.add_argument('--counts', type=int, nargs='+', default=[16], help='images per preview')
    parser.add_argument('--reps', type=int, default=3, help='timed previews per measurement')
    parser.add_argument('--coverage', type=float, default=0.1,
                        help='fraction of the template the label covers (a centred disc)')
    parser.add_argument('--resolution', type=int, default=256, help='label resolution (--resolution)')
    parser.add_argument('--devices', nargs='+', default=None,
                        help='devices to measure (default: cpu, plus cuda when available)')
    return parser.parse_args(argv)


def make_inputs(folder, size, count):
    """An LMDB of ``count`` random images and a released-size random-weight checkpoint."""
    rng = np.random.default_rng(0)
    data = os.path.join(folder, 'data')
    write_lmdb_dataset(data, {size: rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)})
    torch.manual_seed(0)
    state = get_stn(['similarity', 'flow'], flow_size=128, supersize=size, channel_multiplier=0.5).state_dict()
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=128, stn_channel_multiplier=0.5,
                              num_heads=1, real_size=size)
    ckpt = save_checkpoint({'t_ema': state, 'args': args}, os.path.join(folder, 'stn.pt'))
    return data, ckpt


def disc_label(size, coverage):
    """uint8 (size, size, 4): an opaque disc covering ``coverage`` of the square."""
    radius = size * np.sqrt(coverage / np.pi)
    y, x = np.mgrid[:size, :size]
    inside = (x - size / 2 + 0.5) ** 2 + (y - size / 2 + 0.5) ** 2 <= radius ** 2
    label = np.zeros((size, size, 4), dtype=np.uint8)
    label[inside] = (255, 64, 0, 255)
    return label


def timed(function, request, device):
    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    function(request)
    if device == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        data, ckpt = make_inputs(folder, args.size, max(args.counts) * (args.reps + 1))
        for device in devices:
            _, engine = build_engine(['--ckpt', ckpt, '--real_data_path', data, '--real_size', str(args.size),
                                      '--resolution', str(args.resolution), '--device', device, '--n_mean', '4',
                                      '--out', os.path.join(folder, 'out')], verbose=False)
            engine.set_label(encode_image(disc_label(args.size, args.coverage)))
            points = int((engine.label[..., 3] > 0).sum() * (args.resolution / args.size) ** 2)
            for count in args.counts:
                engine.wait_for_average(0)
                engine.preview({'selection': {'mode': 'first', 'count': 1}})  # warm-up
                cold, warm = [], []
                for rep in range(args.reps):
                    # A new selection (alignment computed), then a new label on it (alignment kept).
                    request = {'selection': {'mode': 'random', 'count': count, 'seed': rep + 1}}
                    engine._congeal_cache.clear()
                    cold.append(timed(engine.preview, request, device))
                    warm.append(timed(engine.preview, dict(request, sigma=1.0), device))
                rows.append((device, count, args.size, points, float(np.median(cold)), float(np.median(warm))))
    print(f'torch threads: {torch.get_num_threads()}')
    print('| device | images | size | label points | new images: s / preview | same images, new label: s |')
    print('|---|---|---|---|---|---|')
    for device, count, size, points, cold, warm in rows:
        print(f'| {device} | {count} | {size} | ~{points} | {cold:.2f} | {warm:.2f} |')


if __name__ == '__main__':
    main()
