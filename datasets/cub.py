"""CUB-200-2011, ACSM validation split -> the PCK dataset format.

The images and bounding boxes of the split come from ACSM's
``val_cub_cleaned.mat``. Each image is cropped to its bounding box grown by
5% on every side and made square around its centre (edge pixels repeat
outside the image), then resized; keypoints (CUB's 15 parts) follow the same
crop. Pairs are random (the protocol samples 10,000 random pairs).
"""
import os
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import torch

from datasets.keypoint_pairs import PCKSource
from utils.download import download_file, ensure_dataset_folder
from utils.errors import DatasetError, UserError

CUB_URL = 'https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz'
CUB_FOLDER = 'CUB_200_2011'
ACSM_VAL_URL = 'http://efrosgans.eecs.berkeley.edu/gangealing/val_cub_cleaned.mat'
ACSM_VAL_FILE = 'val_cub_cleaned.mat'
NUM_PARTS = 15
BOX_PADDING = 0.05

# CUB part order after a horizontal mirror (left/right parts swap).
CUB_PERMUTATION = [0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14]


def ensure_cub(data_dir, progress=True):
    """The extracted CUB_200_2011 folder under ``data_dir``, downloaded and
    extracted first when missing (archive: ``<data_dir>/CUB_200_2011.tgz``)."""
    return ensure_dataset_folder(CUB_URL, data_dir, 'CUB_200_2011.tgz', CUB_FOLDER, progress=progress)


def ensure_acsm_split(data_dir, progress=True):
    """ACSM's validation-split file ``<data_dir>/val_cub_cleaned.mat``,
    downloaded when missing."""
    return download_file(ACSM_VAL_URL, os.path.join(data_dir, ACSM_VAL_FILE), progress=progress)


def round_half_away(value):
    """Round to the nearest integer, ties away from zero (Python 2 rounding,
    which ACSM's preprocessing used)."""
    return int(Decimal(float(value)).to_integral_value(rounding=ROUND_HALF_UP))


def square_box(box):
    """Grow the shorter side of an inclusive box (x0, y0, x1, y1) so it is square,
    keeping it centred (ACSM's rounding). Returns integer (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (round_half_away(v) for v in box)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    side = max(width, height)
    x0 -= round_half_away((side - width) / 2.0)
    y0 -= round_half_away((side - height) / 2.0)
    return x0, y0, x0 + side - 1, y0 + side - 1


def padded_box(box, fraction=BOX_PADDING):
    """Grow an inclusive (x0, y0, x1, y1) box by ``fraction`` of its size on each side."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0 + 1, y1 - y0 + 1
    return x0 - fraction * width, y0 - fraction * height, x1 + fraction * width, y1 + fraction * height


def load_cub_parts(path):
    """``parts/part_locs.txt`` -> float (num_images, 15, 3): x, y (CUB's
    one-based pixels), visibility."""
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise UserError(f"could not read CUB part locations '{path}' ({e})") from None
    if table.shape[1] != 5 or table.shape[0] % NUM_PARTS:
        raise UserError(f"'{path}' does not look like CUB's part_locs.txt")
    table = table.reshape(-1, NUM_PARTS, 5)
    return torch.from_numpy(table[..., 2:5]).float()


def _read_acsm_split(mat_path):
    """(relative image paths, one-based image ids, zero-based (x0, y0, x1, y1) boxes)."""
    from scipy.io import loadmat
    try:
        images = loadmat(mat_path)['images']
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not read ACSM split file '{mat_path}' ({e}); delete it and run again") from None
    rel_paths = [str(entry[0]) for entry in images['rel_path'][0]]
    ids = [int(entry[0, 0]) for entry in images['id'][0]]
    boxes = []
    for entry in images['bbox'][0]:
        fields = entry[0, 0]
        boxes.append(tuple(float(fields[name][0, 0]) - 1 for name in ('x1', 'y1', 'x2', 'y2')))
    return rel_paths, ids, boxes


def load_cub_acsm_split(cub_root, mat_path, size):
    """Read the ACSM validation split of CUB.

    Args:
        cub_root: the extracted CUB_200_2011 folder (images/, parts/).
        mat_path: ACSM's val_cub_cleaned.mat.
        size: resolution of the stored crops (keypoints are expressed at it).
    Returns:
        PCKSource with per-image square crop boxes and random pairs (None).
    """
    parts_path = os.path.join(cub_root, 'parts', 'part_locs.txt')
    if not os.path.isfile(parts_path):
        raise DatasetError(f"'{cub_root}' is not an extracted CUB_200_2011 folder (no parts/part_locs.txt); "
                           f"give the CUB_200_2011 folder itself, or no folder to download it")
    parts = load_cub_parts(parts_path)
    rel_paths, ids, boxes = _read_acsm_split(mat_path)
    files, crop_boxes, keypoints = [], [], []
    for rel_path, image_id, box in zip(rel_paths, ids, boxes):
        if not 1 <= image_id <= parts.size(0):
            raise UserError(f"image id {image_id} of '{mat_path}' is not in '{parts_path}'")
        crop = square_box(padded_box(box))
        side = crop[2] - crop[0] + 1
        points = parts[image_id - 1].clone()
        # Part locations are one-based; the crop box is zero-based.
        points[:, 0] = (points[:, 0] - (crop[0] + 1)) * (size / side)
        points[:, 1] = (points[:, 1] - (crop[1] + 1)) * (size / side)
        points[:, :2] *= points[:, 2:3]
        files.append(os.path.join(cub_root, 'images', rel_path))
        crop_boxes.append(crop)
        keypoints.append(points)
    return PCKSource(files=files, crop_boxes=crop_boxes, keypoints=torch.stack(keypoints), pairs=None,
                     permutation=torch.tensor(CUB_PERMUTATION, dtype=torch.long), keypoint_size=size)
