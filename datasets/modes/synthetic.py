"""``--dataset_mode synthetic``: "real" images rendered from the synthetic world.

Images come from ``synthetic_world.render_dataset`` with seeds the
generator never uses (``--synthetic_seed``; the test split and the PCK set
use the next seed), so they are held out. The PCK set is rendered once into
``<results>/<exp-name>/synthetic_eval`` (or a folder in the system's temporary
directory when there is no experiment) with the shared LMDB and PCK writers,
and reused while its description (count, size, seed, world flags) matches.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import torch
from torch.utils.data import Dataset

from utils.errors import UserError
from datasets.lmdb_dataset import close_reader, write_lmdb_dataset
from datasets.modes import DATASET_MODES
from utils.argparse_tools import has_option
from utils.atomic_io import make_staging_folder, publish_folder
from datasets.keypoint_pairs import PCKDataset, write_pck_files
from synthetic_world import (MIRROR_PERMUTATION, add_world_options, factors_from_options,
                                   indexed_params, render, render_dataset)

DESCRIPTION_FILE = 'synthetic_world.json'
SPLIT_SEED_OFFSET = {'train': 0, 'val': 1, 'test': 1}


def _add_once(parser, flag, **kwargs):
    if not has_option(parser, flag):
        parser.add_argument(flag, **kwargs)


class SyntheticImages(Dataset):
    """Rendered faces as float (3, size, size) tensors in [-1, 1].

    Item i is face i of the dataset ``seed`` (synthetic_world.indexed_params),
    rendered on demand and rounded to 8 bits like an image stored by prepare_data.
    """

    def __init__(self, count, size, seed, factors=None):
        self.count, self.size, self.seed, self.factors = int(count), int(size), int(seed), factors

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        """Items ``indices`` as a list, rendered in one batch (the DataLoader
        fetches whole batches through this: about 5x faster than face by face)."""
        indices = [int(i) for i in indices]
        for index in indices:
            if not 0 <= index < self.count:
                raise IndexError(f'index {index} out of range for {self.count} synthetic images')
        with torch.no_grad():
            images, _ = render(indexed_params(indices, self.seed, self.factors), self.size)
        return list(torch.round((images + 1) * 127.5) / 127.5 - 1)


def _cache_folder(opt, description):
    results, name = getattr(opt, 'results', None), getattr(opt, 'exp_name', None)
    if results and name:
        return os.path.join(results, name, 'synthetic_eval')
    digest = hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), 'synthetic_eval', digest)


def _read_description(folder):
    try:
        with open(os.path.join(folder, DESCRIPTION_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_synthetic_pck(folder, count, size, seed, factors, description):
    """Render ``count`` faces at ``size`` into a PCK dataset folder.

    Pairs are consecutive faces (0, 1), (2, 3), ... The folder is built under
    a temporary name beside ``folder`` and renamed when complete (with
    ``description`` written last), so an interrupted run leaves nothing that
    looks finished.
    """
    staging = make_staging_folder(folder)  # a killed run's staging folder is removed first
    try:
        images, keypoints = render_dataset(count, size, seed, factors)
        write_lmdb_dataset(staging, {size: images}, image_format='png')
        close_reader(staging)
        pairs = torch.arange(count - count % 2).view(-1, 2)
        write_pck_files(staging, keypoints, pairs, MIRROR_PERMUTATION, keypoint_size=size)
        with open(os.path.join(staging, DESCRIPTION_FILE), 'w') as f:
            json.dump(description, f, indent=2, sort_keys=True)
        if _read_description(folder) == description:
            shutil.rmtree(staging)  # another process (rank) finished the same set first
            return
        if os.path.exists(folder):
            close_reader(folder)
        publish_folder(staging, folder, replace=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@DATASET_MODES.register('synthetic')
class SyntheticMode:
    """Held-out renders of the synthetic world (the world flags are shared with
    ``--generator synthetic``)."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """Adds the world flags, --synthetic_seed, --synthetic_num_images and
        --synthetic_eval_images. Returns ``parser``."""
        add_world_options(parser)
        _add_once(parser, '--synthetic_seed', type=int, default=1000,
                  help='seed of the rendered real images (test split and PCK set: seed + 1)')
        _add_once(parser, '--synthetic_num_images', type=int, default=1000,
                  help='number of rendered real images per split')
        _add_once(parser, '--synthetic_eval_images', type=int, default=1000,
                  help='held-out rendered images for PCK-Transfer (consecutive pairs: half as many)')
        return parser

    @staticmethod
    def validate(opt, parser):
        """Rejects world flags out of range and negative seeds and image counts (parser.error, exit 2)."""
        try:
            factors_from_options(opt)
        except UserError as e:
            parser.error(str(e))
        if opt.synthetic_seed < 0:
            parser.error(f'--synthetic_seed must be >= 0, got {opt.synthetic_seed}')
        if opt.synthetic_num_images < 1:
            parser.error(f'--synthetic_num_images must be >= 1, got {opt.synthetic_num_images}')
        if opt.synthetic_eval_images < 2:
            parser.error(f'--synthetic_eval_images must be >= 2 (one pair), got {opt.synthetic_eval_images}')

    @staticmethod
    def ignored_options(opt):
        """--real_data_path: the images are rendered, not read."""
        return {'real_data_path': '--dataset_mode synthetic renders its images; pass --dataset_mode lmdb '
                                  '(a folder made by prepare_data.py) or image_folder to use your images'}

    @staticmethod
    def build_images(opt, split):
        """SyntheticImages of --synthetic_num_images faces at --real_size for
        ``split`` ('train' or 'test'/'val')."""
        seed = opt.synthetic_seed + SPLIT_SEED_OFFSET.get(split, 0)
        return SyntheticImages(opt.synthetic_num_images, opt.real_size, seed, factors_from_options(opt))

    @staticmethod
    def build_pck(opt):
        """datasets.keypoint_pairs.PCKDataset of --synthetic_eval_images held-out faces at
        --real_size (consecutive pairs), rendered once and cached."""
        factors = factors_from_options(opt)
        count, size = int(opt.synthetic_eval_images), int(opt.real_size)
        seed = opt.synthetic_seed + SPLIT_SEED_OFFSET['test']
        description = {'count': count, 'size': size, 'seed': seed,
                       'factors': {k: list(v) if isinstance(v, tuple) else v
                                   for k, v in dataclasses.asdict(factors).items()}}
        folder = _cache_folder(opt, description)
        if _read_description(folder) != description:
            write_synthetic_pck(folder, count, size, seed, factors, description)
        return PCKDataset(folder, size)
