"""Congeal images, average them, and carry a label drawn on the average back to every image.

    python -m applications.propagate_to_images --ckpt cat --real_data_path data/lsun_cats \
        --n_mean 1000 --label_path assets/masks/cat_mask.png --dset_indices 1922 2363 8558
    torchrun --nproc_per_node=8 -m applications.propagate_to_images ...

Outputs (in --out):
- input_images_grid.png, congealed_images_grid.png: the chosen images (all of
  the dataset without --dset_indices; grids show the first GRID_LIMIT) and
  their aligned versions;
- average.png (--n_mean N): the mean of N congealed images;
- propagated_grid.png (--label_path): the label splatted onto every image;
- average_annotated_grid.png (--label_path with --average_path or --n_mean):
  the label drawn on the average image;
- with --save_individual_images, folders of the same names (without _grid)
  holding one PNG per image, numbered by position in the selection.

The label lives in congealed space. Each of its pixels is sent through the
inverse warp (a lookup in the transformer's sampling grid) to where it sits in
the image, and splatted there with a Gaussian (--sigma) blended at --opacity
(--blend_alg: alpha or Laplacian blending). Without --objects the label is
coloured along a colour scale (turbo; a clustering model's --cluster picks
that cluster's scale).

Clustering models: with the checkpoint's cluster classifier, --cluster K
keeps only the images the classifier assigns to cluster K (mirrored as it
says), so the average is cluster K's and --dset_indices count its images;
without --cluster the classifier picks each image's head. Without a
classifier --cluster K aligns every image with head K. A --label_path or
--average_path naming 'cluster0' (e.g. cat_cluster0.png) reads cluster K's
file (cat_clusterK.png).
Every file is written to a temporary name and renamed when complete.
"""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from applications.common.data import build_dataset
from applications.common.models import check_cluster, load_stn, select_cluster
from applications.common.output import save_grid, save_png
from applications.common.propagation import (Label, align, cluster_label_path, load_label, option_problems,
                                             propagate_aligned, propagation_argparse, splat_label)
from applications.common.scores import filter_by_flow_scores, flow_score_problems
from models.gangealing import CongealedMean
from options import parse_eval_options
from utils.argparse_tools import report_option_problems
from utils.atomic_io import check_output_folder
from utils.colour_scales import scale_for_cluster
from utils.distributed import all_gather_tensor, cleanup, is_main_process, rank_share, setup_distributed
from utils.errors import UserError, exit_on_user_error
from utils.image_io import tensor_to_uint8

GRID_LIMIT = 100  # images shown in each grid; individual files have no limit

# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'num_pck_pairs': 'it picks keypoint pairs, which only applications.pck evaluates',
    'seed': 'nothing here is drawn at random',
}


def make_loader(dataset, indices, opt):
    return DataLoader(Subset(dataset, indices), batch_size=opt.batch, shuffle=False,
                      num_workers=opt.num_workers, drop_last=False)


@torch.no_grad()
def average_congealed(t, opt, dataset, device, classifier=None):
    """Mean of the first --n_mean congealed images (all processes); saves average.png.

    Returns the average (3, R, R) in image units and its path.
    """
    count = min(opt.n_mean, len(dataset))
    mean = CongealedMean(1, 3, opt.output_resolution, device)
    for images in make_loader(dataset, rank_share(list(range(count))), opt):
        mean.add(align(t, opt, images.to(device), classifier=classifier).congealed)
    average = mean.result()[0][0]
    path = os.path.join(opt.out, 'average.png')
    if is_main_process():
        # Averages are low in contrast; stretched to the full range, as the original tool saves them.
        save_png(tensor_to_uint8(average, value_range=None), path)
        print(f'Saved the average of {count} congealed images to {path}')
    return average, path


class GridCollector:
    """Keeps the first GRID_LIMIT outputs of each kind, tagged with their positions."""

    def __init__(self):
        self.parts = {}

    def add(self, kind, positions, images):
        keep = [i for i, p in enumerate(positions) if p < GRID_LIMIT]
        if keep:
            self.parts.setdefault(kind, []).append((torch.tensor([positions[i] for i in keep]),
                                                    images[keep].float().cpu()))

    def gathered(self, kind, device, channels, size):
        """Every process's kept images of ``kind`` in position order (collective)."""
        parts = self.parts.get(kind, [])
        positions = torch.cat([p for p, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
        images = torch.cat([i for _, i in parts]) if parts else torch.zeros(0, channels, size, size)
        positions = all_gather_tensor(positions.to(device)).cpu()
        images = all_gather_tensor(images.to(device)).cpu()
        return images[positions.argsort()]


def write_individual(opt, kind, positions, images):
    if opt.save_individual_images:
        for position, image in zip(positions, images):
            save_png(tensor_to_uint8(image), os.path.join(opt.out, kind, f'{position:03}.png'))


def selected_indices(opt, dataset):
    """The dataset indices to process (--dset_indices, or all). Raises UserError for one out of range."""
    selection = list(opt.dset_indices) if opt.dset_indices is not None else list(range(len(dataset)))
    bad = [i for i in selection if not 0 <= i < len(dataset)]
    if bad:
        raise UserError(f'--dset_indices {bad[0]} is out of range: the dataset has {len(dataset)} images '
                        f'(indices 0 to {len(dataset) - 1})')
    return selection


@torch.no_grad()
def process_selection(t, opt, dataset, device, label, selection, classifier=None):
    """Congeal (and propagate onto) the images of ``selection``; write grids and files."""
    positions = rank_share(list(range(len(selection))))
    grids = GridCollector()
    done = 0
    for images in make_loader(dataset, [selection[p] for p in positions], opt):
        batch_positions = positions[done:done + images.size(0)]
        done += images.size(0)
        images = images.to(device)
        alignment = align(t, opt, images, classifier=classifier)
        outputs = {'input_images': images, 'congealed_images': alignment.congealed}
        if label is not None:
            outputs['propagated'] = propagate_aligned(t, opt, images, alignment, label, opt.blend_alg)
        for kind, batch in outputs.items():
            grids.add(kind, batch_positions, batch)
            write_individual(opt, kind, batch_positions, batch)
    sizes = {'input_images': opt.real_size, 'congealed_images': opt.output_resolution,
             'propagated': opt.real_size}
    for kind in ('input_images', 'congealed_images', 'propagated'):
        if kind == 'propagated' and label is None:
            continue
        gathered = grids.gathered(kind, device, 3, sizes[kind])
        if is_main_process():
            save_grid(gathered, os.path.join(opt.out, f'{kind}_grid.png'))


def read_average(path, size):
    """The average congealed image at ``path`` as (1, 3, size, size) in [-1, 1]; UserError when unreadable."""
    if not os.path.isfile(path):
        raise UserError(f"average image '{path}' does not exist; check --average_path")
    try:
        with Image.open(path) as image:
            average = np.asarray(image.convert('RGB').resize((size, size), Image.LANCZOS), dtype=np.float32)
    except OSError as e:
        raise UserError(f"average image '{path}' could not be read ({e})") from None
    return torch.from_numpy(average).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1


def annotate_average(opt, label, device, average=None):
    """Draw the label on the average congealed image; saves average_annotated_grid.png."""
    size = opt.output_resolution
    if average is None:
        average = read_average(opt.average_path, size)
    average = average.to(device)
    annotated = splat_label(average, label.pixels_at(size).unsqueeze(0), label.colours, label.alpha, opt,
                            opt.blend_alg)
    save_grid(annotated, os.path.join(opt.out, 'average_annotated_grid.png'))
    write_individual(opt, 'average_annotated', [0], annotated)


@exit_on_user_error
def main(argv=None):
    parser = propagation_argparse()
    opt = parse_eval_options(parser, argv, unread=UNREAD_OPTIONS)
    report_option_problems(parser, option_problems(opt) + flow_score_problems(opt))
    check_output_folder(opt.out)
    device, _, _ = setup_distributed(opt.device)
    try:
        dataset, _ = filter_by_flow_scores(opt, build_dataset(opt))
        t, classifier = load_stn(opt, device, with_classifier=True)
        check_cluster(opt, classifier)
        dataset, _ = select_cluster(opt, dataset, classifier, device)
        cluster = opt.cluster if opt.num_heads > 1 else None
        if cluster is not None and opt.average_path is not None:
            opt.average_path = cluster_label_path(opt.average_path, cluster)
        label = None
        if opt.label_path is not None:
            path = opt.label_path if cluster is None else cluster_label_path(opt.label_path, cluster)
            label = Label(*load_label(path, opt.resolution, opt.objects, device, scale_for_cluster(cluster)),
                          opt.resolution)
        # Every input is checked before any work or output.
        selection = selected_indices(opt, dataset)
        given_average = None
        if label is not None and opt.average_path is not None and opt.n_mean <= 0:
            given_average = read_average(opt.average_path, opt.output_resolution)
        os.makedirs(opt.out, exist_ok=True)
        if opt.n_mean > 0:
            _, opt.average_path = average_congealed(t, opt, dataset, device, classifier)
        process_selection(t, opt, dataset, device, label, selection, classifier)
        if label is not None and opt.average_path is not None and is_main_process():
            annotate_average(opt, label, device, given_average)
        if is_main_process():
            print(f'All output images are in {opt.out}')
    finally:
        cleanup()


if __name__ == '__main__':
    main()
