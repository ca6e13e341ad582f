"""Write an aligned (and optionally filtered) copy of a dataset.

    python -m applications.congeal_dataset --ckpt cat --real_data_path data/lsun_cats --real_size 256 \
        --out data/lsun_cats_aligned --output_resolution 256 \
        --flow_scores data/lsun_cats/flow_scores.pt --fraction_retained 0.9
    torchrun --nproc_per_node=8 -m applications.congeal_dataset ...

Every image (of those --flow_scores/--fraction_retained keep and, for a
clustering model with a cluster classifier and --cluster K, of those the
classifier assigns to cluster K) is mirrored as
the flip decision says and warped by the similarity stages of the transformer
alone (rotation, zoom and shift: no flow, so no warping artefacts), sampling
the image at its stored resolution. An image is left out when its warp

- reads beyond the image for more than --max_out_of_bounds of the output
  (2.5%, as the original: the object would be extrapolated from padding), or
- zooms in so far that the crop spans fewer than --min_effective_resolution
  pixels of the image (the output would be an upsampled low-resolution crop).

The original's recipe for images of any shape works unchanged: store them as
they are (python prepare_data.py --path folder --out data/raw --pad none
--size 0), then pass --real_size 0: each image is read at its stored size,
border-padded to a square of its longer side, aligned from a flow-size copy
and sampled at full resolution.

Outputs in --out: an LMDB dataset of the congealed images at
--output_resolution (our and the original's layout, readable with
--real_data_path --real_size OUTPUT_RESOLUTION), and ``dataset_indices.pt``: a
long tensor whose entry i is the index, in the input dataset, of output image
i. Everything is written to a temporary folder beside --out and renamed when
complete, so an interrupted run leaves no dataset at --out.
"""
import math
import os
import shutil

import torch
import torch.nn.functional as F
from tqdm import tqdm

from applications.common.data import build_dataset
from applications.common.models import check_cluster, decide_heads, load_stn, select_cluster, stn_kwargs
from applications.common.scores import add_flow_score_options, filter_by_flow_scores, flow_score_problems
from datasets.lmdb_dataset import LMDBWriter, is_lmdb_folder
from models.gangealing import resize_for_stn
from models.spatial_transformers import warp_exceeds_image_bounds
from options import base_eval_argparse, parse_eval_options
from utils.argparse_tools import report_option_problems
from utils.atomic_io import check_output_folder, make_staging_folder, publish_folder
from utils.distributed import (all_gather_tensor, barrier, cleanup, get_world_size, is_main_process, rank_share,
                               setup_distributed)
from utils.errors import UserError, exit_on_user_error
from utils.image_io import encode_image, tensor_to_uint8

INDICES_FILE = 'dataset_indices.pt'

# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'num_pck_pairs': 'it picks keypoint pairs, which only applications.pck evaluates',
    'seed': 'nothing here is drawn at random',
}


def build_parser():
    parser = base_eval_argparse()
    parser.description = 'Write a congealed (aligned) copy of a dataset as an LMDB'
    add_flow_score_options(parser)
    parser.add_argument('--min_effective_resolution', type=int, default=192,
                        help='leave out images whose aligned crop spans fewer than this many pixels of the '
                             'image (a strong zoom would give an upsampled, blurry output)')
    parser.add_argument('--max_out_of_bounds', type=float, default=0.025,
                        help='leave out images whose warp reads beyond the image for more than this fraction of '
                             'the output pixels (along x or y)')
    parser.add_argument('--cluster', type=int, default=None,
                        help="clustering models: with the checkpoint's cluster classifier, congeal only the "
                             'images it assigns to this cluster (without --cluster, every image with the head '
                             'the classifier picks); without a classifier, every image with this head')
    # The original's defaults: --out is required, outputs are 256 x 256.
    parser.set_defaults(out=None, output_resolution=256)
    return parser


def option_problems(opt):
    problems = flow_score_problems(opt)
    if not opt.out:
        problems.append('--out is required: the folder of the congealed dataset')
    if opt.output_resolution < 1:
        problems.append(f'--output_resolution must be positive, got {opt.output_resolution}')
    if not 0 <= opt.max_out_of_bounds <= 1:
        problems.append(f'--max_out_of_bounds must be in [0, 1], got {opt.max_out_of_bounds}')
    if opt.min_effective_resolution < 0:
        problems.append(f'--min_effective_resolution must not be negative, got {opt.min_effective_resolution}')
    return problems


def check_empty_output(out):
    """Refuse an --out that cannot be written, or holds a dataset or anything else (nothing is overwritten)."""
    check_output_folder(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UserError(f"--out '{out}' exists and is not a folder")
        if is_lmdb_folder(out):
            raise UserError(f"'{out}' already holds a dataset; choose another --out or remove it first")
        if os.listdir(out):
            raise UserError(f"--out '{out}' is not empty; choose a new or empty folder")


def border_pad_square(images):
    """(N, 3, H, W) -> (N, 3, S, S) with S = max(H, W), centred, edges repeated."""
    height, width = images.shape[-2:]
    size = max(height, width)
    if height == width:
        return images
    left, top = (size - width) // 2, (size - height) // 2
    return F.pad(images, (left, size - width - left, top, size - height - top), mode='replicate')


def similarity_warp(t, inputs, source, policy, opt):
    """Warp ``source`` with the similarity stages of ``t`` regressed from ``inputs``.

    Returns (images (N, 3, R, R), grid (N, R, R, 2), matrix (N, 2, 3)).
    """
    kwargs = dict(output_resolution=opt.output_resolution, input_img_for_sampling=source, warp_policy=policy,
                  **stn_kwargs(opt))
    if hasattr(t, 'forward_similarity'):
        return t.forward_similarity(inputs, **kwargs)
    if getattr(t, 'transform', None) != 'similarity':
        raise UserError('congeal_dataset uses the similarity stage of the transformer, and this one has none '
                        f"(--transform {' '.join(opt.transform)})")
    return t(inputs, return_warp=True, return_flow=True, **kwargs)


@torch.no_grad()
def congeal_group(t, classifier, opt, images):
    """Align same-shaped images (N, 3, H, W) at their stored resolution.

    Returns (congealed (N, 3, R, R), keep (N,) bool, out_of_bounds (N,) bool,
    too_small (N,) bool).
    """
    return _congeal_group(t, classifier, opt, images)[:4]


def _congeal_group(t, classifier, opt, images):
    height, width = images.shape[-2:]
    source = border_pad_square(images)
    inputs = resize_for_stn(source, opt.flow_size)
    inputs, mirrored, _, policy = decide_heads(opt, t, classifier, inputs, opt.cluster)
    source = torch.where(mirrored.view(-1, 1, 1, 1), source.flip(3), source)
    congealed, grid, matrix = similarity_warp(t, inputs, source, policy, opt)
    bounds = torch.tensor([[height, width]], dtype=torch.float32, device=images.device).expand(images.size(0), 2)
    out_of_bounds = warp_exceeds_image_bounds(grid, bounds, threshold=getattr(opt, 'max_out_of_bounds', 0.025))
    # The similarity maps template positions to image positions; its scale (the
    # square root of the determinant) is the fraction of the image the output spans.
    scale = torch.linalg.det(matrix[:, :, :2].double()).abs().sqrt()
    too_small = scale * min(height, width) < opt.min_effective_resolution
    return congealed, ~(out_of_bounds | too_small), out_of_bounds, too_small, matrix, mirrored


def congeal_keypoints(keypoints, matrix, mirrored, size, output_resolution, permutation=None):
    """Carry keypoints of square images into their congealed outputs.

    Args:
        keypoints: (N, P, 3) x, y pixels of the (size x size) image and visibility.
        matrix: (N, 2, 3) similarity (template -> mirrored-where-chosen image, normalised).
        mirrored: (N,) bool, images mirrored before warping.
        permutation: keypoint order after a mirror (None: unchanged).
    Returns:
        (N, P, 3) x, y pixels of the output and visibility (0 where the
        point is hidden or falls outside the output).
    """
    from models.spatial_transformers.base import mirror_points
    from models.spatial_transformers.geometry import apply_affine, invert_affine

    keypoints = mirror_points(keypoints.to(matrix.dtype), mirrored, size, permutation)
    normalised = (2 * keypoints[..., :2] + 1) / size - 1
    template = apply_affine(invert_affine(matrix), normalised)
    pixels = (template + 1) * output_resolution / 2 - 0.5
    inside = ((pixels >= -0.5) & (pixels <= output_resolution - 0.5)).all(dim=-1)
    visible = (keypoints[..., 2] > 0) & inside
    return torch.cat([pixels, visible.unsqueeze(-1).to(pixels.dtype)], dim=-1)


def congeal_all(t, classifier, opt, dataset, kept, device, writer, truth=None):
    """Congeal this process's share of ``dataset``; the main process writes every share in order.

    Args:
        dataset: the (filtered) images; ``kept`` (M,) their indices in the input dataset.
        writer: LMDBWriter on the main process, None elsewhere.
        truth: None, or {'keypoints': (N, P, 3) pixels of the stored images,
            'permutation': (P,) or None} of the input dataset.
    Returns:
        (written input indices (K,) long, counts dict, congealed keypoints
        (K, P, 3) or None).
    """
    positions = rank_share(list(range(len(dataset))))
    # Every process runs the same number of steps: the gathers are collective.
    per_rank = math.ceil(len(dataset) / get_world_size())
    steps = math.ceil(per_rank / opt.batch)
    written, counts, points = [], {'out_of_bounds': 0, 'too_small': 0}, []
    iterator = range(steps)
    if is_main_process():
        iterator = tqdm(iterator, desc='congealing', unit='batch')
    for step in iterator:
        mine = positions[step * opt.batch:(step + 1) * opt.batch]
        images = [dataset[p] for p in mine]
        out = torch.zeros(0, opt.output_resolution, opt.output_resolution, 3, dtype=torch.uint8, device=device)
        out_index = torch.zeros(0, dtype=torch.long, device=device)
        out_points = torch.zeros(0, *(truth['keypoints'].shape[1:] if truth is not None else (0, 3)), device=device)
        flags = torch.zeros(2, dtype=torch.long, device=device)
        # Stored images may differ in shape (e.g. prepared with --pad resize_small_side): group equal shapes.
        shapes = {}
        for p, image in zip(mine, images):
            shapes.setdefault(tuple(image.shape), []).append((p, image))
        for members in shapes.values():
            batch = torch.stack([image for _, image in members]).to(device)
            congealed, keep, oob, small, matrix, mirrored = _congeal_group(t, classifier, opt, batch)
            if truth is not None:
                where = torch.tensor([p for p, _ in members], dtype=torch.long)
                moved = congeal_keypoints(truth['keypoints'][kept[where]].to(device), matrix, mirrored,
                                          batch.shape[-1], opt.output_resolution, truth['permutation'])
                out_points = torch.cat([out_points, moved[keep].float()])
            flags += torch.stack([oob.sum(), (small & ~oob).sum()]).to(device)
            which = torch.tensor([p for p, _ in members], dtype=torch.long)[keep.cpu()]
            out = torch.cat([out, torch.from_numpy(tensor_to_uint8(congealed[keep])).to(device)])
            out_index = torch.cat([out_index, kept[which].to(device)])
        out = all_gather_tensor(out).cpu()
        out_index = all_gather_tensor(out_index).cpu()
        out_points = all_gather_tensor(out_points).cpu()
        flags = all_gather_tensor(flags.view(1, 2)).sum(0).cpu()
        counts['out_of_bounds'] += int(flags[0])
        counts['too_small'] += int(flags[1])
        order = out_index.argsort()
        if truth is not None:
            points.append(out_points[order])
        if writer is not None:
            for i in order.tolist():
                writer.put(opt.output_resolution, len(written), encode_image(out[i].numpy(), 'png'))
                written.append(int(out_index[i]))
        else:
            written.extend(out_index[order].tolist())
    keypoints = torch.cat(points) if truth is not None and points else None
    return torch.tensor(written, dtype=torch.long), counts, keypoints


def read_keypoints(opt):
    """The input's keypoints at --real_size (a PCK dataset of square images), or None."""
    from datasets.keypoint_pairs import PERMUTATION_FILE, PCKDataset, has_pck_files
    if opt.dataset_mode != 'lmdb' or not has_pck_files(opt.real_data_path):
        return None
    pck = PCKDataset(opt.real_data_path, opt.real_size)
    keypoints = pck.keypoints.clone()
    keypoints[..., 2] = keypoints[..., 2].clamp(0, 1)
    has_permutation = os.path.isfile(os.path.join(opt.real_data_path, PERMUTATION_FILE))
    return {'keypoints': keypoints, 'permutation': pck.permutation if has_permutation else None}


@exit_on_user_error
def main(argv=None):
    parser = build_parser()
    opt = parse_eval_options(parser, argv, unread=UNREAD_OPTIONS, native_size=True)
    report_option_problems(parser, option_problems(opt))
    check_empty_output(opt.out)
    device, _, _ = setup_distributed(opt.device)
    staging = None
    try:
        dataset = build_dataset(opt)
        dataset, kept = filter_by_flow_scores(opt, dataset)
        t, classifier = load_stn(opt, device, with_classifier=True)
        check_cluster(opt, classifier)
        dataset, kept = select_cluster(opt, dataset, classifier, device, kept)
        writer = None
        if is_main_process():
            staging = make_staging_folder(opt.out)  # an earlier killed run's staging folder is removed
            writer = LMDBWriter(staging)
        try:
            truth = read_keypoints(opt)
            written, counts, keypoints = congeal_all(t, classifier, opt, dataset, kept, device, writer, truth)
            if writer is not None:
                if written.numel() == 0:
                    raise UserError(f'none of the {len(dataset)} images passed the checks ({counts["out_of_bounds"]} '
                                    f'read beyond the image, {counts["too_small"]} below --min_effective_resolution '
                                    f'{opt.min_effective_resolution}); nothing was written')
                torch.save(written, os.path.join(staging, INDICES_FILE))
                if keypoints is not None:  # the congealed dataset stays a keypoint dataset
                    from datasets.keypoint_pairs import write_pck_files
                    permutation = truth['permutation']
                    if permutation is None:
                        permutation = torch.arange(keypoints.shape[1])
                    write_pck_files(staging, keypoints, None, permutation, keypoint_size=opt.output_resolution)
                writer.finish(written.numel())
        finally:
            if writer is not None:
                writer.close()
        if is_main_process():
            _publish(staging, opt.out)
            staging = None
            print(f'Wrote {written.numel()} congealed images ({opt.output_resolution} x {opt.output_resolution}) '
                  f'of {len(dataset)} to {opt.out}; left out {counts["out_of_bounds"]} reading beyond the image and '
                  f'{counts["too_small"]} below --min_effective_resolution {opt.min_effective_resolution}')
        barrier()
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        cleanup()


def _publish(staging, out):
    """Move the finished dataset from ``staging`` to ``out`` (absent or empty)."""
    check_empty_output(out)  # still empty: another run may have written there meanwhile
    publish_folder(staging, out)


if __name__ == '__main__':
    main()
