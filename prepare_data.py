"""Prepare real data: images -> an LMDB dataset at one or several resolutions.

Sources:
- a folder of images or video frames (``--path``, ``--pattern``), sorted by name;
- an existing LMDB of encoded images (``--input_is_lmdb``; LSUN with
  ``--lsun_category``, downloaded into ``--data_dir``);
- SPair-71K keypoint pairs (``--spair_category``, ``--spair_split``) and the
  CUB ACSM validation split (``--cub_acsm``), written as PCK datasets;
- the built-in synthetic world (``--synthetic --seed S``), a PCK dataset
  whose keypoints are known exactly;
- a video file (``--path clip.mp4``: anything FFmpeg decodes), every frame
  (or the first ``--max_images``) stored in order.

``--synthetic_video OUT.mp4 --frames N --size S --seed SEED`` renders a
video instead: one synthetic face moving smoothly (synthetic_world/moving_face.py),
with its exact keypoints beside it in OUT.keypoints.pt, a float tensor
(N, 10, 3): x, y in pixels of the S x S frames, then visibility (0/1), in
the keypoint order of synthetic_world/keypoints.py (KEYPOINT_NAMES).

Images are made square with ``--pad`` and resized to every ``--size``.
Unreadable images are skipped and counted. The ``length`` key is written
last, so an interrupted run never leaves a dataset that looks complete.

Examples:
  python prepare_data.py --path folder_of_images --pattern '*.jpg' --out data/mine --pad center --size 256
  python prepare_data.py --spair_category cat --spair_split test --out data/spair_cats_test --size 256
  python prepare_data.py --cub_acsm --out data/cub_val --size 256
  python prepare_data.py --synthetic --seed 0 --out data/synthetic --size 64,128
  python prepare_data.py --path clip.mp4 --out data/clip --size 256 --pad center
  python prepare_data.py --synthetic_video data/face.mp4 --frames 240 --size 128 --seed 1
"""
import argparse
import multiprocessing
import os
import shutil
import sys
from functools import partial

import torch
from tqdm import tqdm

from datasets.lmdb_dataset import LENGTH_KEY, LMDBWriter, is_lmdb_folder, list_sizes, reader_env
from datasets.keypoint_pairs import (INVERSE_FILE, KEYPOINTS_FILE, META_FILE, PAIRS_FILE, PERMUTATION_FILE,
                          THRESHOLDS_FILE, PCKSource, write_pck_files)
from datasets.spair import SPAIR_PERMUTATIONS, SPAIR_SPLITS
from datasets.transforms import PAD_MODES, crop_box_edge_padded, make_square
from utils.checkpoint import save_checkpoint
from utils.errors import UserError, exit_on_user_error
from utils.image_io import IMAGE_FORMATS, decode_image_bytes, encode_image, read_image_file, resize_array

LSUN_URL = 'http://dl.yf.io/lsun/objects/{category}.zip'
SYNTHETIC_DEFAULT_IMAGES = 1000
DATASET_FILES = ('data.mdb', 'lock.mdb', 'outliers.pt', KEYPOINTS_FILE, PAIRS_FILE, PERMUTATION_FILE, THRESHOLDS_FILE,
                 INVERSE_FILE, META_FILE)
ERRORS_SHOWN = 5


def build_parser():
    """The command-line flags (those of the original GANgealing prepare_data, plus
    --synthetic, --seed, --data_dir and --overwrite)."""
    parser = argparse.ArgumentParser(description='Create LMDB image datasets for GANgealing',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', type=str, default=None, help='folder of the output LMDB dataset')
    parser.add_argument('--size', type=str, default='256',
                        help='comma-separated resolutions to store, e.g. 128,256 (0 with --pad none: as is)')
    parser.add_argument('--n_worker', type=int, default=8, help='worker processes (0 or 1: in this process)')
    parser.add_argument('--format', type=str, choices=IMAGE_FORMATS, default='png',
                        help='how images are encoded in the database')
    parser.add_argument('--pad', choices=PAD_MODES, default='center',
                        help='how images become square: center = centre crop, border = pad with repeated '
                             'edge pixels, zero = pad with black, resize_small_side = shorter side to the '
                             'size keeping the aspect ratio, none = store as is')
    parser.add_argument('--path', type=str, default=None,
                        help='folder of images (or video frames), a video file, or an LMDB with --input_is_lmdb; for '
                             'SPair/CUB the extracted dataset folder (default: downloaded into --data_dir)')
    parser.add_argument('--input_is_lmdb', action='store_true',
                        help='--path is an LMDB of encoded images (e.g. LSUN); --pattern is ignored')
    parser.add_argument('--pattern', type=str, default='*.png',
                        help="glob pattern of the images inside --path ('**' recurses)")
    parser.add_argument('--max_images', type=int, default=None,
                        help='keep at most this many images (default: all; with --synthetic: '
                             f'the number rendered, default {SYNTHETIC_DEFAULT_IMAGES})')
    parser.add_argument('--spair_category', type=str, default=None, choices=list(SPAIR_PERMUTATIONS),
                        help='build the SPair-71K PCK dataset of this category (border padding)')
    parser.add_argument('--spair_split', type=str, default='test', choices=SPAIR_SPLITS,
                        help='SPair-71K split (with --spair_category)')
    parser.add_argument('--lsun_category', type=str, default=None,
                        help='download this LSUN object category into --data_dir and use it as input')
    parser.add_argument('--cub_acsm', action='store_true',
                        help="build the CUB PCK dataset from ACSM's validation split and crops")
    parser.add_argument('--synthetic', action='store_true',
                        help='render the built-in synthetic world (a PCK dataset with exact keypoints)')
    parser.add_argument('--seed', type=int, default=0, help='random seed of --synthetic and --synthetic_video')
    parser.add_argument('--outlier_fraction', type=float, default=0.0,
                        help='with --synthetic: this fraction of the images are off-class outliers (faces cut '
                             'by the frame, tiny faces, scrambled faces), labelled in outliers.pt')
    parser.add_argument('--synthetic_video', type=str, default=None, metavar='OUT.mp4',
                        help='render a video of one synthetic face moving smoothly to this mp4, with its '
                             'keypoints in OUT.keypoints.pt (one --size; --out is not used)')
    parser.add_argument('--frames', type=int, default=120, help='frames of --synthetic_video')
    parser.add_argument('--fps', type=float, default=30, help='frames per second of --synthetic_video')
    parser.add_argument('--data_dir', type=str, default='data',
                        help='where downloaded datasets (SPair, CUB, LSUN) are kept')
    parser.add_argument('--overwrite', action='store_true', help='replace a dataset already at --out')
    from synthetic_world import add_world_options
    add_world_options(parser)  # the world --synthetic renders (same flags as training)
    return parser


def parse_sizes(text, pad):
    """'128,256' -> [128, 256]; sizes must be positive (0 is allowed with pad 'none')."""
    sizes = []
    for part in str(text).split(','):
        part = part.strip()
        try:
            size = int(part)
        except ValueError:
            raise UserError(f"--size must be comma-separated integers such as 128,256; got '{text}'") from None
        if size < 0 or (size == 0 and pad != 'none'):
            raise UserError(f'--size {size} is not a valid resolution; use positive integers '
                            f'(0 only with --pad none)')
        if size not in sizes:
            sizes.append(size)
    return sizes


# ----------------------------------------------------------------------------- reading sources

def list_lmdb_keys(path, max_images):
    """Keys of the images of an input LMDB, in order.

    For a dataset in our own layout only the largest resolution is read;
    otherwise every key except ``length`` is an image.
    """
    if not os.path.isdir(path) or not is_lmdb_folder(path):
        raise UserError(f"'{path}' is not an LMDB folder (no data.mdb inside); check --path")
    with reader_env(path, refresh=True).begin(write=False) as txn:
        length = txn.get(LENGTH_KEY)
        sizes = list_sizes(txn) if length is not None else []
        if length is not None and sizes:
            count = int(length.decode('utf-8'))
            if max_images is not None:
                count = min(count, max_images)
            return [f'{max(sizes)}-{i:05d}'.encode('utf-8') for i in range(count)]
        keys = []
        for key in txn.cursor().iternext(values=False):
            if key == LENGTH_KEY:
                continue
            keys.append(bytes(key))
            if max_images is not None and len(keys) >= max_images:
                break
    return keys


def process_image(task, sizes, pad, image_format, lmdb_path):
    """Worker: read one image, make it square at every size, encode.

    Args:
        task: (index, source, crop_box); source is a file path, or an LMDB key
            when ``lmdb_path`` is set; crop_box an inclusive (x0, y0, x1, y1)
            square to crop (then resized) instead of the pad mode, or None.
    Returns:
        (index, list of encoded bytes per size, None) or (index, None, error text).
    """
    index, source, crop_box = task
    try:
        if lmdb_path is not None:
            with reader_env(lmdb_path).begin(write=False) as txn:
                image = decode_image_bytes(txn.get(source))
        else:
            image = read_image_file(source)
        if crop_box is not None:
            image = crop_box_edge_padded(image, crop_box)
        encoded = []
        for size in sizes:
            square = resize_array(image, size, size) if crop_box is not None else make_square(image, size, pad)
            encoded.append(encode_image(square, image_format))
        return index, encoded, None
    except Exception as e:  # any decoding failure means a corrupt file: skip it, never abort the job
        name = source.decode('utf-8', 'replace') if isinstance(source, bytes) else source
        return index, None, f'{name}: {type(e).__name__}: {e}'


def _results(tasks, worker, n_worker):
    if n_worker <= 1:
        return map(worker, tasks)
    pool = multiprocessing.Pool(n_worker)
    return _pool_results(pool, worker, tasks)


def _pool_results(pool, worker, tasks):
    try:
        yield from pool.imap(worker, tasks, chunksize=4)
    finally:
        pool.terminate()
        pool.join()


def write_images(writer, tasks, sizes, pad, image_format, n_worker, lmdb_path=None):
    """Process ``tasks`` with ``n_worker`` processes and store the results in order.

    Returns:
        (kept, errors): the task indices that were stored (in storage order)
        and the error texts of those skipped.
    """
    worker = partial(process_image, sizes=sizes, pad=pad, image_format=image_format, lmdb_path=lmdb_path)
    kept, errors = [], []
    for index, encoded, error in tqdm(_results(tasks, worker, n_worker), total=len(tasks),
                                      desc='images', unit='img', file=sys.stderr):
        if encoded is None:
            errors.append(error)
            continue
        for size, data in zip(sizes, encoded):
            writer.put(size, len(kept), data)
        kept.append(index)
    return kept, errors


def subset_pck_source(source, kept):
    """Re-index a PCKSource to the images that were stored (in order ``kept``);
    pairs that lost an image are dropped."""
    kept_tensor = torch.tensor(kept, dtype=torch.long)
    new_index = torch.full((len(source.files),), -1, dtype=torch.long)
    new_index[kept_tensor] = torch.arange(len(kept))
    pairs = None
    if source.pairs is not None:
        mapped = new_index[source.pairs]
        pairs = mapped[(mapped >= 0).all(dim=1)]
    return PCKSource(
        files=[source.files[i] for i in kept], crop_boxes=[source.crop_boxes[i] for i in kept],
        keypoints=source.keypoints[kept_tensor], pairs=pairs, permutation=source.permutation,
        keypoint_size=source.keypoint_size,
        thresholds=None if source.thresholds is None else source.thresholds[kept_tensor],
        inverse_coordinates=None if source.inverse_coordinates is None else source.inverse_coordinates[kept_tensor])


# ----------------------------------------------------------------------------- output folder

class OutputFolder:
    """The output dataset folder: refuses to replace a dataset without
    ``overwrite`` and, when the job fails, removes what this run wrote."""

    def __init__(self, out, overwrite):
        if not out:
            raise UserError('--out is required: the folder to write the dataset to')
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"--out '{out}' exists and is not a folder")
        if os.path.isdir(out) and is_lmdb_folder(out) and not overwrite:
            raise UserError(f"'{out}' already holds a dataset; pass --overwrite to replace it "
                            f"or choose another --out")
        self.out = out
        self.overwrite = overwrite

    def __enter__(self):
        self.created = not os.path.isdir(self.out)
        if not self.created and self.overwrite:
            self._remove_dataset_files()
        os.makedirs(self.out, exist_ok=True)
        return self.out

    def _remove_dataset_files(self):
        for name in DATASET_FILES:
            path = os.path.join(self.out, name)
            if os.path.exists(path):
                os.remove(path)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            if self.created:
                shutil.rmtree(self.out, ignore_errors=True)
            else:
                self._remove_dataset_files()
        return False


def _report_skipped(errors, total):
    if not errors:
        return
    print(f'warning: skipped {len(errors)} of {total} images that could not be read:', file=sys.stderr)
    for error in errors[:ERRORS_SHOWN]:
        print(f'  {error}', file=sys.stderr)
    if len(errors) > ERRORS_SHOWN:
        print(f'  ... and {len(errors) - ERRORS_SHOWN} more', file=sys.stderr)


def prepare_from_tasks(out, tasks, sizes, pad, image_format, n_worker, lmdb_path=None, pck_source=None):
    """Write the images of ``tasks`` (and the PCK files of ``pck_source``) to ``out``.

    Returns the number of images stored.
    """
    with LMDBWriter(out) as writer:
        kept, errors = write_images(writer, tasks, sizes, pad, image_format, n_worker, lmdb_path)
        _report_skipped(errors, len(tasks))
        if not kept:
            raise UserError(f'none of the {len(tasks)} images could be read; nothing was written')
        if pck_source is not None:
            stored = subset_pck_source(pck_source, kept)
            write_pck_files(out, stored.keypoints, stored.pairs, stored.permutation,
                            thresholds=stored.thresholds, inverse_coordinates=stored.inverse_coordinates,
                            keypoint_size=stored.keypoint_size)
        writer.finish(len(kept))
    return len(kept)


def prepare_synthetic(out, sizes, num_images, seed, image_format, factors=None, outlier_fraction=0.0):
    """Render the synthetic world at every size and store it as a PCK dataset.

    Keypoints come from the largest size; pairs are consecutive images
    (0, 1), (2, 3), ... of which neither is an outlier. ``factors``: the
    world's variation (None: defaults). ``outlier_fraction``: that fraction of
    the images are outliers (synthetic_world.outliers), labelled in outliers.pt.
    A world of several modes (``factors.modes`` > 1) records each image's true
    mode in modes.pt (synthetic_world.dataset.MODES_FILE).
    """
    from synthetic_world.outliers import OUTLIERS_FILE, outlier_labels, render_outliers
    from synthetic_world import MIRROR_PERMUTATION, render_dataset
    from synthetic_world.dataset import MODES_FILE, dataset_modes
    if num_images < 2:
        raise UserError('--synthetic needs at least 2 images (--max_images)')
    labels = outlier_labels(num_images, outlier_fraction, seed)
    outliers = torch.nonzero(labels).reshape(-1)
    largest = max(sizes)
    keypoints = None
    with LMDBWriter(out) as writer:
        for size in sorted(sizes):
            images, points = render_dataset(num_images, size, seed, factors=factors)
            if outliers.numel():
                images[outliers.numpy()], points[outliers] = render_outliers(outliers, labels[outliers], size, seed,
                                                                             factors)
            for index in tqdm(range(num_images), desc=f'size {size}', unit='img', file=sys.stderr):
                writer.put(size, index, encode_image(images[index], image_format))
            if size == largest:
                keypoints = torch.as_tensor(points, dtype=torch.float32)
        pairs = torch.arange(num_images - num_images % 2).view(-1, 2)
        pairs = pairs[(labels[pairs] == 0).all(dim=1)]
        if outliers.numel():
            save_checkpoint(labels, os.path.join(out, OUTLIERS_FILE))
        if factors is not None and factors.modes > 1:
            save_checkpoint(dataset_modes(num_images, seed, factors), os.path.join(out, MODES_FILE))
        write_pck_files(out, keypoints, pairs, torch.as_tensor(MIRROR_PERMUTATION, dtype=torch.long),
                        keypoint_size=largest)
        writer.finish(num_images)
    return num_images


def prepare_from_video(out, path, sizes, pad, image_format, max_images=None):
    """Store the frames of the video ``path`` (at most ``max_images``) at every size.

    Frames are decoded, made square and encoded one at a time (memory does
    not grow with the video's length). Returns the number of frames stored.
    """
    from utils.video_io import VideoReader
    count = 0
    with VideoReader(path) as reader, LMDBWriter(out) as writer:
        total = reader.frame_count if max_images is None else min(max_images, reader.frame_count or max_images)
        for frame in tqdm(reader, total=total, desc='frames', unit='frame', file=sys.stderr):
            if max_images is not None and count >= max_images:
                break
            for size in sizes:
                writer.put(size, count, encode_image(make_square(frame, size, pad), image_format))
            count += 1
        writer.finish(count)
    return count


def keypoints_path_for(video_path):
    """'clips/face.mp4' -> 'clips/face.keypoints.pt' (where --synthetic_video puts the keypoints)."""
    return os.path.splitext(video_path)[0] + '.keypoints.pt'


def prepare_synthetic_video(path, frames, size, seed, fps, factors=None):
    """Render the synthetic video ``seed`` to ``path`` (H.264 mp4) and its keypoints beside it.

    Both files are written under temporary names and renamed when complete;
    the keypoints first, so a video under its final name always has them.
    Returns the keypoints path.
    """
    from utils.atomic_io import atomic_write
    from synthetic_world.moving_face import iter_synthetic_video
    from utils.video_io import VideoWriter
    if frames < 1:
        raise UserError(f'--frames must be at least 1 (got {frames})')
    keypoints = []
    with VideoWriter(path, fps) as writer:
        with tqdm(total=frames, desc='frames', unit='frame', file=sys.stderr) as bar:
            for images, points in iter_synthetic_video(frames, size, seed, factors):
                writer.write(images)
                keypoints.append(points)
                bar.update(len(images))
        keypoints_path = keypoints_path_for(path)
        atomic_write(keypoints_path, lambda f: torch.save(torch.cat(keypoints).float(), f))
    return keypoints_path


# ----------------------------------------------------------------------------- main

def _pad_for(args):
    if args.cub_acsm:
        return None  # CUB uses its own square crops
    if args.spair_category is not None:
        return 'border'  # keeps the whole image, as SPair's evaluation expects
    return args.pad


def _collect_tasks(args, sizes):
    """(tasks, lmdb_path, pck_source) for the chosen input; validates it."""
    from datasets.image_folder import find_images
    if args.cub_acsm:
        from datasets.cub import ensure_acsm_split, ensure_cub, load_cub_acsm_split
        os.makedirs(args.data_dir, exist_ok=True)
        mat_path = ensure_acsm_split(args.data_dir)
        root = args.path if args.path is not None else ensure_cub(args.data_dir)
        source = load_cub_acsm_split(root, mat_path, max(sizes))
        source = _limit(source, args.max_images)
        return [(i, f, box) for i, (f, box) in enumerate(zip(source.files, source.crop_boxes))], None, source
    if args.spair_category is not None:
        from datasets.spair import ensure_spair, load_spair_split
        if args.path is None:
            os.makedirs(args.data_dir, exist_ok=True)
        root = args.path if args.path is not None else ensure_spair(args.data_dir)
        source = load_spair_split(root, args.spair_category, args.spair_split, max(sizes))
        source = _limit(source, args.max_images)
        return [(i, f, None) for i, f in enumerate(source.files)], None, source
    if args.lsun_category is not None:
        from utils.download import download_file, extract_archive_folder
        folder = os.path.join(args.data_dir, args.lsun_category)
        if not os.path.isdir(folder):
            url = LSUN_URL.format(category=args.lsun_category)
            archive = download_file(url, os.path.join(args.data_dir, f'{args.lsun_category}.zip'))
            extract_archive_folder(archive, args.data_dir, args.lsun_category)
        args.path, args.input_is_lmdb = folder, True
    if args.path is None:
        raise UserError('--path is required: a folder of images, or an LMDB with --input_is_lmdb '
                        '(or use --spair_category, --cub_acsm, --lsun_category or --synthetic)')
    if args.input_is_lmdb:
        keys = list_lmdb_keys(args.path, args.max_images)
        if not keys:
            raise UserError(f"the LMDB '{args.path}' holds no images")
        return [(i, key, None) for i, key in enumerate(keys)], args.path, None
    files = find_images(args.path, args.pattern)
    if args.max_images is not None:
        files = files[:args.max_images]
    return [(i, f, None) for i, f in enumerate(files)], None, None


def _limit(source, max_images):
    """Keep the first ``max_images`` images of a PCKSource (pairs inside them)."""
    if max_images is None or max_images >= len(source.files):
        return source
    return subset_pck_source(source, list(range(max_images)))


def _check_world_flags(parser, args):
    """Refuse (parser.error: usage, one error line, exit 2; before anything is written) world flags
    out of range, and photo-world flags without --synthetic (the video and real data have no scene to set)."""
    from synthetic_world import factors_from_options
    from synthetic_world.options import photo_flags_given
    try:
        factors_from_options(args)
    except UserError as e:
        parser.error(str(e))
    given = photo_flags_given(args)
    if given and not args.synthetic:
        parser.error(f'{", ".join(given)} apply to --synthetic only (the photo world of rendered datasets)')


@exit_on_user_error
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_world_flags(parser, args)
    if args.max_images is not None and args.max_images < 1:
        raise UserError('--max_images must be at least 1')
    chosen = [name for name, on in (('--synthetic', args.synthetic), ('--cub_acsm', args.cub_acsm),
                                    ('--spair_category', args.spair_category is not None),
                                    ('--lsun_category', args.lsun_category is not None)) if on]
    if len(chosen) > 1:
        raise UserError(f"choose one input: {' and '.join(chosen)} were both given")
    if args.outlier_fraction and not args.synthetic:
        raise UserError('--outlier_fraction applies to --synthetic only (the outliers of real data are unknown)')
    if not 0 <= args.outlier_fraction < 1:
        raise UserError(f'--outlier_fraction must be in [0, 1), got {args.outlier_fraction}')
    if args.synthetic_modes != 1 and not (args.synthetic or args.synthetic_video is not None):
        raise UserError('--synthetic_modes applies to --synthetic and --synthetic_video only')
    pad = _pad_for(args)
    sizes = parse_sizes(args.size, pad or 'center')
    if args.synthetic_video is not None:
        if chosen or args.path is not None:
            raise UserError('--synthetic_video renders a video on its own; drop the other inputs')
        if len(sizes) != 1:
            raise UserError(f'--synthetic_video takes one --size (got {args.size})')
        from synthetic_world import factors_from_options
        keypoints = prepare_synthetic_video(args.synthetic_video, args.frames, sizes[0], args.seed, args.fps,
                                            factors_from_options(args))
        print(f'wrote {args.frames} frames to {args.synthetic_video} and their keypoints to {keypoints}')
        return 0
    output = OutputFolder(args.out, args.overwrite)

    if args.synthetic:
        print(f"dataset resolutions: {', '.join(map(str, sizes))}")
        from synthetic_world import factors_from_options
        num_images = args.max_images or SYNTHETIC_DEFAULT_IMAGES
        factors = factors_from_options(args)
        with output as out:
            count = prepare_synthetic(out, sizes, num_images, args.seed, args.format, factors, args.outlier_fraction)
    elif args.path is not None and os.path.isfile(args.path) and not chosen:
        from utils.video_io import VideoReader
        VideoReader(args.path).close()  # refuses a file that is not a video before --out is touched
        print(f"video '{args.path}'; resolutions: {', '.join(map(str, sizes))}")
        with output as out:
            count = prepare_from_video(out, args.path, sizes, pad, args.format, args.max_images)
    else:
        tasks, lmdb_path, pck_source = _collect_tasks(args, sizes)
        print(f"found {len(tasks)} images (first: {_describe(tasks[0][1])}); "
              f"resolutions: {', '.join(map(str, sizes))}")
        with output as out:
            count = prepare_from_tasks(out, tasks, sizes, pad, args.format, args.n_worker,
                                       lmdb_path=lmdb_path, pck_source=pck_source)
    print(f'wrote {count} images to {args.out}')
    return 0


def _describe(source):
    return source.decode('utf-8', 'replace') if isinstance(source, bytes) else source


if __name__ == '__main__':
    main()
