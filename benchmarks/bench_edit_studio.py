"""Edit studio preview latency: seconds from the request to the propagated images.

    python -m benchmarks.bench_edit_studio                  # N = 16 at 256 px, CPU (and CUDA when present)
    python -m benchmarks.bench_edit_studio --counts 1 16 --reps 3 --devices cpu
    python -m benchmarks.bench_edit_studio --video_frames 48 --skip_images   # the mp4 export only

Builds, in a temporary folder, an LMDB of random 256-pixel images and a
randomly initialised transformer of the released models' size (similarity
then flow, flow_size 128, channel multiplier 0.5: the cost does not depend on
the weights), then times ``StudioEngine.preview`` for each number of images: on images
not seen before (flip decision, congealing, propagation, PNG encoding), and
again on the same images with another label (the alignment is kept, so only
the warps are kept, so only the splat runs). Medians over --reps random
selections, after one warm-up. A second studio averages the first N images
into its template (--n_mean N), which keeps their warps, and times previews
of those N images with a new label each time (nothing cached between
previews but the kept warps): splat only, and checked pixel for pixel against
the first studio aligning them on demand. Prints a markdown table.

The same run also times the computation alone (no PNG encoding) both ways
on the same images: the four-pass path (flip decision, a congealing pass,
then a point-mapping pass in ``propagate``; that pass again for a new label)
and the kept-warp path (``align`` then ``propagate_aligned``), so the speed-up
is measured under the same machine load.

With --video_frames T (default 24; 0 skips it) the same transformer's studio
is opened on a T-frame synthetic video at --size (the synthetic world's
moving face, H.264) and the propagated mp4 export of the whole video is
timed (frames per second, from the request to the renamed file), beside its
two parts alone in the same run: the propagation (``propagate_frames`` on
the decoded frames: the alignment passes and the splat) and the video input
and output (decoding, squares, encoding; no network, no splat).
"""
import argparse
import os
import tempfile
import time

import numpy as np
import torch

from applications.common.models import determine_flips, stn_kwargs
from applications.common.propagation import align, propagate, propagate_aligned
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
    parser.add_argument('--video_frames', type=int, default=24,
                        help='frames of the video whose mp4 export is timed (0: no video export)')
    parser.add_argument('--skip_images', action='store_true', help='time the video export only')
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


def compare_paths(engine, indices, device):
    """Seconds (old new images, new new images, old new label, new new label) of the computation alone."""
    opt = engine.request_options()
    t = engine.t
    with engine.model_lock:
        label = engine._label_tensors(opt)
        images = torch.stack([engine.dataset[i] for i in indices]).to(device)

        def old_align():
            inputs, mirrored = determine_flips(t, images, flip_inference=not opt.no_flip_inference,
                                               warp_policy='cartesian', **stn_kwargs(opt))
            t(inputs, output_resolution=opt.output_resolution, warp_policy='cartesian', **stn_kwargs(opt))
            return inputs, mirrored

        def old_label(state):
            return propagate(t, opt, images, state[0], state[1], 'cartesian', label, opt.blend_alg)

        def new_label(alignment):
            return propagate_aligned(t, opt, images, alignment, label, opt.blend_alg)

        with torch.no_grad():
            state = old_align()
            alignment = align(t, opt, images)
            seconds = (timed(lambda _: old_label(old_align()), None, device),
                       timed(lambda _: new_label(align(t, opt, images)), None, device),
                       timed(lambda _: old_label(state), None, device),
                       timed(lambda _: new_label(alignment), None, device))
            same = torch.equal(old_label(state), new_label(alignment))
    return seconds, same


def studio_for(ckpt, data, args, device, folder, *extra):
    _, engine = build_engine(['--ckpt', ckpt, '--real_data_path', data, '--real_size', str(args.size),
                              '--resolution', str(args.resolution), '--device', device,
                              '--out', os.path.join(folder, 'out'), *extra], verbose=False)
    engine.set_label(encode_image(disc_label(args.size, args.coverage)))
    return engine


def averaged_row(engine, on_demand, count, reps, device):
    """(template seconds, median preview seconds, KiB per kept warp, identical pixels) for previews
    of the ``count`` images ``engine`` averaged into its template."""
    start = time.perf_counter()
    engine.wait_for_average(0)
    template_seconds = time.perf_counter() - start
    request = {'selection': {'mode': 'first', 'count': count}}
    seconds = []
    for rep in range(reps + 1):  # the first is a warm-up
        engine._congeal_cache.clear()  # only the kept warps remain between previews
        seconds.append(timed(engine.preview, dict(request, sigma=1.0 + rep / 10), device))
    same = engine.preview(request)['items'] == on_demand.preview(request)['items']
    kib = engine.kept_warp_bytes() / max(1, engine.kept_warps()) / 1024
    return template_seconds, float(np.median(seconds[1:])), kib, same


def make_video(folder, size, frames):
    """A ``frames``-frame synthetic video (the moving face) at ``size``, 30 frames/s."""
    from synthetic_world.moving_face import iter_synthetic_video
    from utils.video_io import VideoWriter

    path = os.path.join(folder, 'face.mp4')
    with VideoWriter(path, 30) as writer:
        for batch, _ in iter_synthetic_video(frames, size, 101):
            writer.write(batch)
    return path


def video_io_seconds(video, folder, batch):
    """Seconds to decode ``video``, make its squares and encode it again (no model work)."""
    from datasets.transforms import native_square, unsquare
    from datasets.video import frame_to_tensor
    from utils.video_io import VideoReader, VideoWriter

    start = time.perf_counter()
    with VideoReader(video.path) as reader, VideoWriter(os.path.join(folder, 'io.mp4'), video.fps) as writer:
        for frames in reader.batches(batch):
            frame_to_tensor(np.stack([video.square(frame) for frame in frames]))
            writer.write(np.stack([unsquare(native_square(frame, video.pad), frame, video.pad) for frame in frames]))
    return time.perf_counter() - start


def export_batch(engine):
    """Frames per batch of the studio's video export."""
    from applications.studio.engine import VIDEO_BATCH
    return min(VIDEO_BATCH, engine.opt.batch)


def propagation_seconds(engine, request, device):
    """Seconds of ``propagate_frames`` alone (what mixed_reality runs per batch) on every frame of the
    studio's video, decoded beforehand: the model's share of the export."""
    from applications.common.video_propagation import propagate_frames

    opt = engine.request_options(sigma=request['sigma'], opacity=request['opacity'])
    label = engine._label_tensors(opt)
    batches = [images.to(device) for _, images in engine.video.batches(export_batch(engine))]
    return timed(lambda _: [propagate_frames(engine.t, opt, images, [None], [label]) for images in batches],
                 None, device)


def video_row(ckpt, args, device, folder):
    """(frames, frames per batch, export seconds, propagation-alone seconds, video I/O seconds) of the
    mp4 export of a synthetic video."""
    path = make_video(folder, args.size, args.video_frames)
    engine = studio_for(ckpt, path, args, device, folder, '--n_mean', '4')
    request = {'sigma': 1.0, 'opacity': 0.75}
    start = time.perf_counter()
    engine.start_video_export(request)
    while engine.video_export_status()['state'] == 'running':
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    job = engine.video_export_status()
    if job['state'] != 'done':
        raise SystemExit(f"the video export failed: {job['error']}")
    return (job['done'], export_batch(engine), seconds, propagation_seconds(engine, request, device),
            video_io_seconds(engine.video, folder, export_batch(engine)))


def main(argv=None):
    args = parse_args(argv)
    devices = args.devices or (['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
    rows, video_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        data, ckpt = make_inputs(folder, args.size, max(args.counts) * (args.reps + 1))
        for device in devices:
            if args.video_frames > 0:
                video_rows.append((device,) + video_row(ckpt, args, device, folder))
            if args.skip_images:
                continue
            # No kept warps here: these rows measure images aligned on demand.
            engine = studio_for(ckpt, data, args, device, folder, '--n_mean', '4', '--keep_warps', '0')
            points = int((engine.label[..., 3] > 0).sum() * (args.resolution / args.size) ** 2)
            for count in args.counts:
                engine.wait_for_average(0)
                engine.preview({'selection': {'mode': 'first', 'count': 1}})  # warm-up
                cold, warm, compared = [], [], []
                for rep in range(args.reps):
                    # A new selection (alignment computed), then a new label on it (alignment kept).
                    request = {'selection': {'mode': 'random', 'count': count, 'seed': rep + 1}}
                    engine._congeal_cache.clear()
                    cold.append(timed(engine.preview, request, device))
                    warm.append(timed(engine.preview, dict(request, sigma=1.0), device))
                    compared.append(compare_paths(engine, engine.resolve_selection(request['selection']), device))
                medians = [float(np.median([c[0][k] for c in compared])) for k in range(4)]
                same = all(c[1] for c in compared)
                averaged = studio_for(ckpt, data, args, device, folder, '--n_mean', str(count))
                engine._congeal_cache.clear()
                kept = averaged_row(averaged, engine, count, args.reps, device)
                rows.append((device, count, args.size, points, float(np.median(cold)), float(np.median(warm)),
                             medians, same, kept))
    print(f'torch threads: {torch.get_num_threads()}')
    if video_rows:
        print(f'Video export (propagated mp4 of the whole video, {args.size} x {args.size}, H.264):')
        print()
        print('| device | frames | batch | export: s | export: frames/s | propagation alone: frames/s '
              '| video I/O alone: frames/s |')
        print('|---|---|---|---|---|---|---|')
        for device, frames, batch, seconds, model_seconds, io_seconds in video_rows:
            print(f'| {device} | {frames} | {batch} | {seconds:.1f} | {frames / seconds:.2f} '
                  f'| {frames / model_seconds:.2f} | {frames / io_seconds:.1f} |')
        print()
    if args.skip_images:
        return
    print('| device | images | size | label points | new images: s / preview | same images, new label: s '
          '| images already averaged into the template: s / preview |')
    print('|---|---|---|---|---|---|---|')
    for device, count, size, points, cold, warm, _, _, kept in rows:
        print(f'| {device} | {count} | {size} | ~{points} | {cold:.2f} | {warm:.2f} | {kept[1]:.2f} |')
    print()
    print('Images already averaged into the template (studio with --n_mean N, warps kept):')
    print()
    print('| device | images | template: s | preview: s | kept warp: KiB / image | same pixels as aligning on demand |')
    print('|---|---|---|---|---|---|')
    for device, count, _, _, _, _, _, _, (template, preview, kib, same) in rows:
        print(f'| {device} | {count} | {template:.1f} | {preview:.2f} | {kib:.1f} | {"yes" if same else "NO"} |')
    print()
    print('Computation alone, four-pass path vs kept-warp path, same images in the same run (s):')
    print()
    print('| device | images | new images: before | after | speed-up | new label: before | after | speed-up '
          '| identical pixels |')
    print('|---|---|---|---|---|---|---|---|---|')
    for device, count, _, _, _, _, (old_cold, new_cold, old_warm, new_warm), same, _ in rows:
        print(f'| {device} | {count} | {old_cold:.2f} | {new_cold:.2f} | {old_cold / new_cold:.1f}x | '
              f'{old_warm:.3f} | {new_warm:.3f} | {old_warm / new_warm:.0f}x | {"yes" if same else "NO"} |')


if __name__ == '__main__':
    main()
