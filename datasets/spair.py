"""SPair-71K keypoint pairs -> the PCK dataset format.

Each pair annotation (``PairAnnotation/<split>/*:<category>.json``) gives two
images: they are stored as consecutive images 2i and 2i+1, border-padded to
a square, and pair i is (2i, 2i+1) (SPair is evaluated on fixed pairs). The
PCK threshold of an image is the longer side of its object bounding box in
original pixels; ``inverse_coordinates`` records how the original image sits
inside the padded square.
"""
import glob
import json
import os

import torch

from datasets.keypoint_pairs import PCKSource
from datasets.transforms import pad_geometry
from utils.download import ensure_dataset_folder
from utils.errors import DatasetError, UserError

SPAIR_URL = 'http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz'
SPAIR_FOLDER = 'SPair-71k'
SPAIR_SPLITS = ('trn', 'val', 'test')

# Keypoint order after a horizontal mirror (over the keypoints a category uses).
SPAIR_PERMUTATIONS = {
    'bicycle': [0, 1, 3, 2, 4, 5, 7, 6, 8, 10, 9, 11],
    'cat': [1, 0, 3, 2, 5, 4, 7, 6, 8, 10, 9, 12, 11, 13, 14],
    'dog': [1, 0, 3, 2, 5, 4, 6, 7, 8, 10, 9, 12, 11, 13, 14, 15],
    'tvmonitor': [2, 1, 0, 7, 6, 5, 4, 3, 10, 9, 8, 15, 14, 13, 12, 11],
}


def ensure_spair(data_dir, progress=True):
    """The extracted SPair-71k folder under ``data_dir``, downloading and
    extracting the archive first when it is missing.

    Raises:
        DownloadError: offline; the message names the URL and where to put
            the archive (``<data_dir>/SPair-71k.tar.gz``).
    """
    return ensure_dataset_folder(SPAIR_URL, data_dir, 'SPair-71k.tar.gz', SPAIR_FOLDER, progress=progress)


def _pad_keypoints(points, width, height, size):
    """(P, 3) keypoints of a (width, height) image -> its border-padded S x S copy.

    Returns the moved keypoints (invisible ones zeroed) and (x offset,
    y offset, scale)."""
    offset_x, offset_y, scale = pad_geometry(width, height, size)
    moved = points.clone()
    moved[:, 0] = points[:, 0] * scale + offset_x
    moved[:, 1] = points[:, 1] * scale + offset_y
    moved[:, :2] *= moved[:, 2:3]
    return moved, (offset_x, offset_y, scale)


def load_spair_split(root, category, split, size):
    """Read one SPair-71K category and split.

    Args:
        root: the extracted SPair-71k folder.
        category: one of SPAIR_PERMUTATIONS.
        split: 'trn', 'val' or 'test'.
        size: resolution the keypoints are expressed at (the stored size).
    Returns:
        PCKSource with files (2 per pair), fixed pairs, thresholds and
        inverse coordinates.
    Raises:
        UserError: unknown category or split, or a folder without the
            expected SPair-71k layout.
    """
    if category not in SPAIR_PERMUTATIONS:
        raise UserError(f"unsupported SPair category '{category}'; choose from {', '.join(SPAIR_PERMUTATIONS)}")
    if split not in SPAIR_SPLITS:
        raise UserError(f"unknown SPair split '{split}'; choose from {', '.join(SPAIR_SPLITS)}")
    pair_dir = os.path.join(root, 'PairAnnotation', split)
    if not os.path.isdir(pair_dir):
        raise DatasetError(f"'{root}' is not an extracted SPair-71k folder (no PairAnnotation/{split}); "
                           f"give the SPair-71k folder itself, or no folder to download it")
    pair_files = sorted(glob.glob(os.path.join(glob.escape(pair_dir), f'*:{category}.json')))
    image_annotations = sorted(glob.glob(os.path.join(glob.escape(root), 'ImageAnnotation', category, '*.json')))
    if not pair_files or not image_annotations:
        raise UserError(f"no SPair-71k annotations for '{category}' ({split}) under '{root}'")
    with open(image_annotations[0]) as f:
        num_points = len(json.load(f)['kps'])

    files, keypoints, thresholds, inverse = [], [], [], []
    for pair_file in pair_files:
        with open(pair_file) as f:
            pair = json.load(f)
        ids = torch.tensor([int(i) for i in pair['kps_ids']], dtype=torch.long)
        for side in ('src', 'trg'):
            points = torch.zeros(num_points, 3)
            xy = torch.tensor(pair[f'{side}_kps'], dtype=torch.float32).view(-1, 2)
            points[ids, :2] = xy
            points[ids, 2] = 1.0
            width, height = pair[f'{side}_imsize'][:2]
            moved, geometry = _pad_keypoints(points, width, height, size)
            x0, y0, x1, y1 = pair[f'{side}_bndbox']
            files.append(os.path.join(root, 'JPEGImages', category, pair[f'{side}_imname']))
            keypoints.append(moved)
            thresholds.append(max(x1 - x0, y1 - y0))
            inverse.append(geometry)
    keypoints = torch.stack(keypoints)
    used = keypoints[:, :, 2].any(dim=0)
    keypoints = keypoints[:, used]
    permutation = torch.tensor(SPAIR_PERMUTATIONS[category], dtype=torch.long)
    if permutation.numel() != keypoints.size(1):
        raise UserError(f"SPair '{category}' uses {keypoints.size(1)} keypoints but its mirror permutation "
                        f"has {permutation.numel()}; is this the official SPair-71k release?")
    num_images = len(files)
    return PCKSource(
        files=files, crop_boxes=[None] * num_images, keypoints=keypoints,
        pairs=torch.arange(num_images).view(-1, 2), permutation=permutation, keypoint_size=size,
        thresholds=torch.tensor(thresholds, dtype=torch.float32),
        inverse_coordinates=torch.tensor(inverse, dtype=torch.float32))
