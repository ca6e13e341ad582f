"""Edit propagation on video, measured against the synthetic world's exact keypoints.

    python -m benchmarks.bench_video_propagation --ckpt results/demo/checkpoints/0002400.pt
    python -m benchmarks.bench_video_propagation --train_iters 2400      # trains the demo first

Steps:
1. the keypoints' template positions: 200 rendered faces of world seed
   --template_seed (not the video's) are congealed with their keypoints and
   each keypoint's median template position kept;
2. a label of small coloured dots (radius --dot_radius at --resolution), one
   colour per keypoint, drawn at those positions;
3. ``prepare_data.py --synthetic_video`` renders --frames frames of one face
   moving smoothly (--seed) at --size, with its true keypoints;
4. ``python -m applications.mixed_reality`` propagates the label onto the
   video (opacity 1, the application's other defaults);
5. every dot is found in every decoded output frame (pixels that changed,
   assigned to the nearest dot colour; centroid) and compared with the true
   keypoint. Where the application mirrored a frame (flip inference), the
   truth of dot k is its mirror partner, as in image PCK-Transfer.

Printed: mean error (pixels), PCK@0.1 of the frame size per keypoint and
overall, the frame-to-frame jitter (mean |detected motion - true motion|
between consecutive frames, pixels), frames per second and peak memory of
the application, and the same transformer's image PCK-Transfer@0.1
(applications.pck on 500 held-out rendered pairs). With --memory_frames
A B the application is also run on videos of A and B frames to show that its
peak memory does not grow with the length; --fps_size measures CPU frames/s
at that --real_size.

Settings (dot radius 3 at resolution 128, opacity 1, sigma 1.2, detection
thresholds: change 40, colour distance 70) were chosen on video seed 100,
where the detected dots agree with the exact propagated positions of
dense_correspondences.pt (also printed, as a cross-check); docs/benchmarks.md
reports seed 101.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Ten well separated, saturated colours: one dot per keypoint.
DOT_COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                        (255, 128, 0), (128, 0, 255), (0, 128, 64), (255, 255, 255)], dtype=np.float64)
CHANGE_THRESHOLD = 40  # summed |output - input| over RGB above which a pixel is part of a dot
COLOUR_DISTANCE = 70   # RGB distance to a dot colour within which a changed pixel counts for that dot
RSS_PROBE = ("import atexit, resource, runpy, sys\n"
             "atexit.register(lambda: print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
             "file=sys.stderr, flush=True))\n"
             "sys.argv = ['mixed_reality'] + sys.argv[1:]\n"
             "runpy.run_module('applications.mixed_reality', run_name='__main__')\n")


def run(command, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f'command failed: {" ".join(map(str, command))}\n{result.stderr[-3000:]}')
    return result


def train(args):
    results = os.path.join(args.work, 'train')
    run([sys.executable, 'train.py', '--exp-name', 'bench_video', '--results', results, '--iter', args.train_iters,
         '--device', 'cpu'])
    folder = os.path.join(results, 'bench_video', 'checkpoints')
    return os.path.join(folder, sorted(os.listdir(folder))[-1])


@torch.no_grad()
def template_keypoints(ckpt, size, resolution, seed, count=200):
    """Median template position (label pixels at ``resolution``) of each keypoint over ``count`` faces."""
    from applications.common.models import determine_flips, load_stn, stn_kwargs
    from applications.common.propagation import propagation_argparse
    from options import parse_eval_options
    from synthetic_world import MIRROR_PERMUTATION, render_dataset
    opt = parse_eval_options(propagation_argparse(), ['--ckpt', ckpt, '--real_size', str(size), '--device', 'cpu'],
                             verbose=False)
    t = load_stn(opt, torch.device('cpu'))
    images, keypoints = render_dataset(count, size, seed)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    inputs, mirrored = determine_flips(t, images, **stn_kwargs(opt))
    points = keypoints[..., :2].clone()
    flipped = points[:, MIRROR_PERMUTATION].clone()
    flipped[..., 0] = size - 1 - flipped[..., 0]
    points = torch.where(mirrored.view(-1, 1, 1), flipped, points)
    congealed = t.congeal_points(inputs, points, normalize_input_points=True, **stn_kwargs(opt))
    grid = t.stn_in_size if getattr(t, 'is_flow', False) else None
    if grid is not None:  # pixel indices of the flow grid
        congealed = (congealed + 0.5) * (resolution / grid) - 0.5
    else:  # normalised positions
        congealed = (congealed + 1) * resolution / 2 - 0.5
    return congealed.median(dim=0).values  # (P, 2)


def write_dot_label(path, centres, resolution, radius):
    from PIL import Image
    yy, xx = np.mgrid[0:resolution, 0:resolution]
    label = np.zeros((resolution, resolution, 4), dtype=np.uint8)
    for k, (x, y) in enumerate(centres.tolist()):
        inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        label[inside, :3] = DOT_COLOURS[k]
        label[inside, 3] = 255
    Image.fromarray(label, 'RGBA').save(path)


def decode_square(path, size):
    from datasets.video import VideoFrames
    frames = [((b + 1) * 127.5).round().permute(0, 2, 3, 1).numpy() for _, b in VideoFrames(path, size).batches(64)]
    return np.concatenate(frames)


def find_dots(output, source, count):
    """Centroids (T, count, 2) of each dot colour among the pixels that changed (NaN: not found).

    Only pixels close to a dot's colour count: the edges of a dot are mixed
    with the frame (and H.264 halves colour resolution), so their colour may
    be nearest to another dot's."""
    changed = np.abs(output - source).sum(-1) > CHANGE_THRESHOLD  # (T, H, W)
    distance = ((output[..., None, :] - DOT_COLOURS[:count]) ** 2).sum(-1)  # (T, H, W, K)
    nearest = np.where(distance.min(-1) < COLOUR_DISTANCE ** 2, distance.argmin(-1), -1)
    found = np.full((output.shape[0], count, 2), np.nan)
    ys, xs = np.mgrid[0:output.shape[1], 0:output.shape[2]]
    for k in range(count):  # ten keypoints: a loop over dots, vectorised over frames and pixels
        mask = changed & (nearest == k)
        weight = mask.sum(axis=(1, 2))
        with np.errstate(invalid='ignore', divide='ignore'):
            found[:, k, 0] = (mask * xs).sum(axis=(1, 2)) / weight
            found[:, k, 1] = (mask * ys).sum(axis=(1, 2)) / weight
    return found


def propagate_video(args, ckpt, label, video, out, size):
    command = [sys.executable, '-c', RSS_PROBE, '--ckpt', ckpt, '--real_data_path', video, '--real_size', size,
               '--label_path', label, '--objects', '--resolution', args.resolution, '--opacity', 1.0,
               '--save_correspondences', '--batch', args.batch, '--device', 'cpu', '--out', out, '--fps', 30]
    result = run(command)
    rss = [int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith('peak_rss_kib')][0]
    fps = [float(line.split('(')[1].split()[0]) for line in result.stdout.splitlines() if 'frames/s' in line][0]
    return os.path.join(out, f'video_{os.path.splitext(os.path.basename(video))[0]}'), fps, rss / 1024


def render_video(path, frames, size, seed):
    run([sys.executable, 'prepare_data.py', '--synthetic_video', path, '--frames', frames, '--size', size,
         '--seed', seed])
    return torch.load(path.replace('.mp4', '.keypoints.pt'), weights_only=True)


def image_pck(ckpt, size, work):
    data = os.path.join(work, 'pck_data')
    if not os.path.isdir(data):
        run([sys.executable, 'prepare_data.py', '--synthetic', '--out', data, '--size', size, '--max_images', 1000,
             '--seed', 1001])
    out = os.path.join(work, 'pck')
    run([sys.executable, '-m', 'applications.pck', '--ckpt', ckpt, '--real_data_path', data, '--real_size', size,
         '--device', 'cpu', '--out', out, '--alphas', 0.1, '--num_workers', 0])
    with open(os.path.join(out, 'pck.json')) as f:
        return json.load(f)['pck']['0.1']


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ckpt', default=None, help='a trained checkpoint (default: train the demo first)')
    parser.add_argument('--train_iters', type=int, default=2400, help='iterations when training')
    parser.add_argument('--frames', type=int, default=240)
    parser.add_argument('--size', type=int, default=64, help='frame size and --real_size (the demo trains at 64)')
    parser.add_argument('--seed', type=int, default=101, help='video seed (settings were chosen on 100)')
    parser.add_argument('--template_seed', type=int, default=2000, help='world seed of the template estimate')
    parser.add_argument('--resolution', type=int, default=128, help='label resolution')
    parser.add_argument('--dot_radius', type=float, default=3.0, help='dot radius in label pixels')
    parser.add_argument('--batch', type=int, default=20)
    parser.add_argument('--memory_frames', type=int, nargs=2, default=None, metavar=('A', 'B'),
                        help='also compare peak memory on videos of A and B frames')
    parser.add_argument('--fps_size', type=int, default=None, help='also measure frames/s at this --real_size')
    parser.add_argument('--work', default=None, help='working folder (default: a temporary one)')
    args = parser.parse_args()
    args.work = args.work or tempfile.mkdtemp(prefix='bench_video_')
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    ckpt = args.ckpt or train(args)
    centres = template_keypoints(ckpt, args.size, args.resolution, args.template_seed)
    label = os.path.join(args.work, 'dots.png')
    write_dot_label(label, centres, args.resolution, args.dot_radius)

    video = os.path.join(args.work, f'face_{args.seed}.mp4')
    truth = render_video(video, args.frames, args.size, args.seed)
    folder, fps, rss = propagate_video(args, ckpt, label, video, os.path.join(args.work, 'mr'), args.size)
    output = decode_square(os.path.join(folder, 'propagated.mp4'), args.size)
    source = decode_square(video, args.size)
    count = truth.shape[1]
    found = find_dots(output, source, count)
    record = torch.load(os.path.join(folder, 'dense_correspondences_extras.pt'), weights_only=True)
    points = torch.load(os.path.join(folder, 'dense_correspondences.pt'), weights_only=True)
    mirrored = record['mirrored'][:, 0].numpy()

    from PIL import Image
    from synthetic_world import KEYPOINT_NAMES, MIRROR_PERMUTATION
    # Which dot each label pixel belongs to, and the mean of its propagated positions.
    dots = np.asarray(Image.open(label))[..., :3].astype(np.float64)
    template = record['template_points'].long().numpy()
    owner = ((dots[template[:, 1], template[:, 0]][:, None] - DOT_COLOURS[:count]) ** 2).sum(-1).argmin(1)
    exact = np.stack([points.numpy()[:, owner == k].mean(1) for k in range(count)], 1)
    true = truth[..., :2].numpy().astype(np.float64)
    expected = np.where(mirrored[:, None, None], true[:, MIRROR_PERMUTATION.numpy()], true)
    error = np.linalg.norm(found - expected, axis=-1)  # (T, K), NaN where a dot was not found
    exact_error = np.linalg.norm(exact - expected, axis=-1)
    hit = np.nan_to_num(error, nan=np.inf) <= 0.1 * args.size
    motion = np.linalg.norm(np.diff(found, axis=0) - np.diff(expected, axis=0), axis=-1)
    pck_image = image_pck(ckpt, args.size, args.work)

    print(f'\nvideo: {args.frames} frames at {args.size} px, seed {args.seed}; checkpoint {ckpt}')
    print(f'frames mirrored by flip inference: {mirrored.mean():.2f}; dots found: {np.isfinite(error).mean():.3f}\n')
    exact_hit = exact_error <= 0.1 * args.size
    print('| keypoint | mean error (px) | PCK@0.1 | exact: mean error | exact: PCK@0.1 |')
    print('|---|---|---|---|---|')
    for k in range(count):
        print(f'| {KEYPOINT_NAMES[k]} | {np.nanmean(error[:, k]):.2f} | {hit[:, k].mean():.3f} | '
              f'{exact_error[:, k].mean():.2f} | {exact_hit[:, k].mean():.3f} |')
    print(f'| **all** | {np.nanmean(error):.2f} | {hit.mean():.3f} | {exact_error.mean():.2f} | '
          f'{exact_hit.mean():.3f} |\n')
    print('(exact: the mean propagated position of each dot\'s label pixels, from dense_correspondences.pt)\n')
    print('| video PCK@0.1 | image PCK-Transfer@0.1 | difference | jitter (px/frame) | frames/s | peak RSS |')
    print('|---|---|---|---|---|---|')
    print(f'| {hit.mean():.3f} | {pck_image:.3f} | {hit.mean() - pck_image:+.3f} | {np.nanmean(motion):.2f} | '
          f'{fps:.1f} | {rss:.0f} MiB |')

    if args.memory_frames:
        print('\n| frames | frames/s | peak RSS |')
        print('|---|---|---|')
        for frames in args.memory_frames:
            path = os.path.join(args.work, f'memory_{frames}.mp4')
            render_video(path, frames, args.size, args.seed)
            _, speed, peak = propagate_video(args, ckpt, label, path, os.path.join(args.work, f'mem_{frames}'),
                                             args.size)
            print(f'| {frames} | {speed:.1f} | {peak:.0f} MiB |', flush=True)
    if args.fps_size:
        path = os.path.join(args.work, f'speed_{args.fps_size}.mp4')
        render_video(path, 60, args.fps_size, args.seed)
        _, speed, peak = propagate_video(args, ckpt, label, path, os.path.join(args.work, 'speed'), args.fps_size)
        print(f'\n--real_size {args.fps_size}: {speed:.2f} frames/s (CPU, {torch.get_num_threads()} threads), '
              f'peak RSS {peak:.0f} MiB')


if __name__ == '__main__':
    start = time.time()
    main()
    print(f'\nwall time {time.time() - start:.0f} s')
