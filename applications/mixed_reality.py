"""Propagate a label drawn once on the congealed template to every frame of a video.

    python -m applications.mixed_reality --ckpt cat --real_data_path my_cat.mp4 --real_size 256 \\
        --label_path assets/objects/cat/cat_cartoon.png --objects --blend_alg laplacian_light
    torchrun --nproc_per_node=8 -m applications.mixed_reality ...

Each frame is aligned on its own (no temporal smoothing): frames are decoded
and processed in batches of --batch and the output is encoded as it comes,
so memory stays flat in the video's length. --real_data_path is a video file
(anything FFmpeg decodes; non-square frames are centre-cropped, or padded
with --pad border|zero), a folder of frames or an LMDB.

Outputs, in --out/video_<input name>[_<clusters>]/:
- propagated.mp4: the video with the label splatted onto every frame;
- congealed.mp4: the congealed (aligned) video, with the label drawn over it
  with --overlay_congealed (one tile per cluster with several --cluster);
- frames/, congealing_frames/ (--save_frames): the same frames as PNGs,
  named by frame number (000000.png, ...);
- labeled_averages.png (--average_path): the label drawn on the average;
- dense_correspondences.pt (--save_correspondences): the original's
  float (T, P, 2) tensor: x, y pixels in the square --real_size frames of
  where each of the P label points lands in each of the T frames (NaN where
  the classifier gave the frame another cluster, see below);
- dense_correspondences_extras.pt (with it): a dict describing those points:
  'template_points' (P, 2): the label pixels at --resolution; 'colours'
  (P, 3) in [-1, 1]; 'alpha' (P, 1); 'cluster' long (P,): the cluster each
  point belongs to (-1 for a unimodal model); 'mirrored' bool (T, K):
  whether frame t was mirrored for the k-th chosen cluster; 'real_size',
  'resolution'; when the classifier picks each frame's cluster,
  'active_cluster' long (T,), and the points of the other clusters' labels
  are NaN in that frame.

Clustering models: --cluster K [L ...] propagates those clusters' labels onto
every frame (the checkpoint's cluster classifier, when it has one, decides
each frame's mirror for each cluster). Without --cluster, a checkpoint with a
classifier lets it pick each frame's cluster and mirror, and that cluster's
label is propagated (every cluster's label is read: a --label_path naming
'cluster0' gives each its own file).
Videos are H.264 mp4 at --fps, written under a temporary name and renamed
when complete; nothing that looks finished is left behind by a failed run.
"""
import contextlib
import os
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from applications.common.frames import gather_step, open_frames, shared_batches
from applications.common.models import load_stn
from applications.common.output import save_grid, save_png
from applications.common.propagation import (add_blend_option, add_video_label_options, cluster_label_path,
                                             label_option_problems, load_labels, splat_label)
from applications.common.video_propagation import empty_outputs, propagate_frames
from options import base_eval_argparse, parse_eval_options
from utils.argparse_tools import report_option_problems
from utils.atomic_io import atomic_write, check_output_folder, make_staging_folder, publish_folder
from utils.distributed import cleanup, is_main_process, setup_distributed
from utils.errors import UserError, exit_on_user_error
from utils.video_io import VideoWriter, check_writable_folder

CORRESPONDENCES = 'dense_correspondences.pt'  # the original's file: the (T, P, 2) points alone
CORRESPONDENCE_EXTRAS = 'dense_correspondences_extras.pt'
FRAME_FOLDERS = {'propagated': 'frames', 'congealed': 'congealing_frames'}  # --save_frames

# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'num_pck_pairs': 'it picks keypoint pairs, which only applications.pck evaluates',
    'seed': 'nothing here is drawn at random',
}


def add_mixed_reality_options(parser):
    """Flags of ``applications.mixed_reality`` (the original script's names and defaults)."""
    from datasets.video import SQUARE_PAD_MODES

    group = parser.add_argument_group('mixed reality')
    group.add_argument('--cluster', type=int, nargs='+', default=None,
                       help='cluster(s) of a clustering model whose label is propagated onto every frame '
                            "(several at once, e.g. --cluster 0 2); without it the checkpoint's cluster "
                            "classifier picks each frame's cluster (required when there is none)")
    add_video_label_options(group, resolution=128, label_required=True)
    group.add_argument('--average_path', type=str, default=None,
                       help="average congealed image to draw the label on (labeled_averages.png); a path "
                            "naming 'cluster0' gives each cluster its own average")
    group.add_argument('--save_frames', action='store_true',
                       help='also save every output frame as a PNG (frames/, congealing_frames/)')
    group.add_argument('--overlay_congealed', action='store_true',
                       help='draw the label over the congealed video (congealed.mp4)')
    group.add_argument('--save_correspondences', action='store_true',
                       help='save where every label point lands in every frame (dense_correspondences.pt)')
    group.add_argument('--pad', type=str, default=None, choices=SQUARE_PAD_MODES,
                       help='how non-square video frames (or images of a folder) become square: center '
                            'crops (the default), border/zero pad (as prepare_data.py --pad)')
    add_blend_option(group)
    return parser


def mixed_reality_argparse():
    """Evaluation parser with the mixed-reality flags (finish with parse_eval_options)."""
    return add_mixed_reality_options(base_eval_argparse())


def option_problems(opt):
    """Readable problems with the mixed-reality options (empty when fine)."""
    problems = label_option_problems(opt)
    if not opt.fps > 0:
        problems.append(f'--fps must be positive (got {opt.fps})')
    if opt.batch < 1:
        problems.append(f'--batch must be at least 1 (got {opt.batch})')
    return problems


def chosen_clusters(opt, classifier=None):
    """[None] for a unimodal model, else the validated --cluster list (every
    cluster when a clustering model's classifier picks each frame's)."""
    if opt.num_heads <= 1:
        if opt.cluster not in (None, [0]):
            raise UserError(f'--cluster {" ".join(map(str, opt.cluster))}: this model has a single cluster '
                            f'(drop --cluster)')
        return [None]
    if not opt.cluster:
        if classifier is not None:
            return list(range(opt.num_heads))
        raise UserError(f'this model has {opt.num_heads} clusters and its checkpoint no cluster classifier: '
                        f'choose one or more with --cluster (0 to {opt.num_heads - 1}), or train a classifier '
                        f'with train_cluster_classifier.py')
    bad = [c for c in opt.cluster if not 0 <= c < opt.num_heads]
    if bad:
        raise UserError(f'--cluster {bad[0]} is out of range: this model has {opt.num_heads} clusters '
                        f'(0 to {opt.num_heads - 1})')
    return list(dict.fromkeys(opt.cluster))


def output_folder(opt, name, clusters):
    # Named by the chosen clusters; no suffix when the classifier picks each frame's.
    suffix = '_' + ''.join(str(c) for c in clusters) if clusters != [None] and opt.cluster else ''
    return os.path.join(opt.out, f'video_{name}{suffix}')


def save_labeled_averages(opt, clusters, labels, folder, device):
    """Draw each cluster's label on its average image; saves labeled_averages.png."""
    drawn = []
    for cluster, label in zip(clusters, labels):
        path = opt.average_path if cluster is None else cluster_label_path(opt.average_path, cluster)
        if not os.path.isfile(path):
            raise UserError(f"average image '{path}' does not exist; check --average_path")
        try:
            with Image.open(path) as image:
                size = opt.resolution
                average = np.asarray(image.convert('RGB').resize((size, size), Image.LANCZOS), dtype=np.float32)
        except OSError as e:
            raise UserError(f"average image '{path}' could not be read ({e})") from None
        average = torch.from_numpy(average).permute(2, 0, 1).unsqueeze(0).to(device) / 127.5 - 1
        drawn.append(splat_label(average, label.points.unsqueeze(0), label.colours, label.alpha, opt, opt.blend_alg))
    drawn = torch.cat(drawn)
    save_grid(drawn, os.path.join(folder, 'labeled_averages.png'), nrow=max(1, int(len(drawn) ** 0.5)))


def save_correspondences(folder, opt, clusters, labels, points, mirrored, active=None):
    """Write dense_correspondences.pt (the (T, P, 2) points alone, as the original) and the
    description of those points in dense_correspondences_extras.pt."""
    extras = {
        'mirrored': torch.cat(mirrored).cpu(),
        'template_points': torch.cat([label.points for label in labels]).cpu(),
        'colours': torch.cat([label.colours for label in labels]).cpu(),
        'alpha': torch.cat([label.alpha for label in labels]).cpu(),
        'cluster': torch.cat([torch.full((len(label),), -1 if c is None else c, dtype=torch.long)
                              for c, label in zip(clusters, labels)]),
        'real_size': int(opt.real_size), 'resolution': int(opt.resolution),
    }
    if active:
        extras['active_cluster'] = torch.cat(active).cpu()
    atomic_write(os.path.join(folder, CORRESPONDENCE_EXTRAS), lambda f: torch.save(extras, f))
    points = torch.cat(points).cpu()
    atomic_write(os.path.join(folder, CORRESPONDENCES), lambda f: torch.save(points, f))


def _stream(t, opt, steps, clusters, labels, folder, device, classifier, staged, bar, records):
    """The frame loop of ``run``: encode the videos, save PNG frames into ``staged`` folders
    ({final name: staging folder}) and collect the correspondence records. Returns the frame count."""
    main = is_main_process()
    correspondences, mirrored, active = records
    count = 0
    with contextlib.ExitStack() as stack:
        writers = {}
        if main:
            for kind, name in (('propagated', 'propagated.mp4'), ('congealed', 'congealed.mp4')):
                writers[kind] = stack.enter_context(VideoWriter(os.path.join(folder, name), opt.fps))
        while True:
            item = next(steps)
            if item is None:
                outputs = empty_outputs(opt, clusters, labels, device, classifier)
            else:
                outputs = propagate_frames(t, opt, item[1].to(device), clusters, labels, classifier=classifier)
            outputs, total = gather_step(outputs)
            if total == 0:
                break
            if main:
                for kind, writer in writers.items():
                    frames = outputs[kind].cpu().numpy()
                    writer.write(frames)
                    if staged:
                        for offset, frame in enumerate(frames):
                            save_png(frame, os.path.join(staged[FRAME_FOLDERS[kind]], f'{count + offset:06d}.png'))
                if opt.save_correspondences:
                    correspondences.append(outputs['points'].cpu())
                    mirrored.append(outputs['mirrored'].cpu())
                    if 'active' in outputs:
                        active.append(outputs['active'].cpu())
            count += total
            bar.update(total)
    return count


@torch.no_grad()
def run(t, opt, source, clusters, labels, folder, device, classifier=None):
    """Stream the frames through the transformer and write the outputs. Returns the frame count."""
    main = is_main_process()
    steps = shared_batches(source, opt.batch)
    correspondences, mirrored, active = [], [], []
    started = time.perf_counter()
    bar = tqdm(total=source.frame_count, unit='frame', desc='frames', file=sys.stderr, disable=not main)
    # PNG frames go to hidden staging folders, renamed into place once every frame is written.
    staged = {sub: make_staging_folder(os.path.join(folder, sub)) for sub in FRAME_FOLDERS.values()} \
        if main and opt.save_frames else {}
    try:
        count = _stream(t, opt, steps, clusters, labels, folder, device, classifier, staged, bar,
                        (correspondences, mirrored, active))
    except BaseException:
        for path in staged.values():
            shutil.rmtree(path, ignore_errors=True)
        raise
    for sub, path in staged.items():
        publish_folder(path, os.path.join(folder, sub), replace=True)
    bar.close()
    if main and opt.save_correspondences:
        save_correspondences(folder, opt, clusters, labels, correspondences, mirrored, active)
    seconds = time.perf_counter() - started
    if main:
        print(f'{count} frames in {seconds:.1f} s ({count / max(seconds, 1e-9):.2f} frames/s); outputs in {folder}')
    return count


@exit_on_user_error
def main(argv=None):
    parser = mixed_reality_argparse()
    opt = parse_eval_options(parser, argv, unread=UNREAD_OPTIONS)
    report_option_problems(parser, option_problems(opt))
    check_output_folder(opt.out)
    device, _, _ = setup_distributed(opt.device)
    try:
        source = open_frames(opt)
        t, classifier = load_stn(opt, device, with_classifier=True)
        if opt.num_heads == 1:
            classifier = None  # a one-head model's mirrors are decided by flow smoothness, as the original
        clusters = chosen_clusters(opt, classifier)
        labels = load_labels(opt, clusters, device)
        folder = output_folder(opt, source.name, clusters)
        if is_main_process():
            check_writable_folder(folder)
            if opt.average_path is not None:
                save_labeled_averages(opt, clusters, labels, folder, device)
        run(t, opt, source, clusters, labels, folder, device, classifier)
    finally:
        cleanup()


if __name__ == '__main__':
    main()
