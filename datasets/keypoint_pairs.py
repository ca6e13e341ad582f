"""Image pairs with keypoints, for PCK-Transfer evaluation.

A PCK dataset is an LMDB image dataset (see ``datasets.lmdb_dataset``) plus:
- ``keypoints.pt``: float (N, P, 3): x, y in pixels of the keypoint size, then
  visibility 0/1;
- ``permutation.pt``: (P,) keypoint order after a left/right mirror;
- optional ``pairs.pt``: long (M, 2) image indices of fixed pairs;
- optional ``pck_thresholds.pt`` (N,) per-image thresholds in original-image
  pixels (SPair: the bounding box's longer side) together with
  ``inverse_coordinates.pt`` (N, 3): x offset, y offset, scale of the
  original image inside the stored image (at the keypoint size);
- optional ``pck_meta.json``: {"keypoint_size": S0}, the resolution the
  keypoints are expressed at (without it: the dataset's only, or largest, size).
"""
import json
import os
import warnings
from dataclasses import dataclass

import torch

from datasets.lmdb_dataset import MultiResolutionDataset, is_lmdb_folder, list_sizes, reader_env
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import DatasetError, UserError

KEYPOINTS_FILE = 'keypoints.pt'
PAIRS_FILE = 'pairs.pt'
PERMUTATION_FILE = 'permutation.pt'
THRESHOLDS_FILE = 'pck_thresholds.pt'
INVERSE_FILE = 'inverse_coordinates.pt'
META_FILE = 'pck_meta.json'


@dataclass
class PCKSource:
    """Images to store and their PCK annotations, index-aligned.

    files: image paths (N); crop_boxes: per-image inclusive square boxes
    (x0, y0, x1, y1) to crop before resizing, or None for the pad mode;
    keypoints: float (N, P, 3) at ``keypoint_size``; pairs: long (M, 2) or
    None; permutation: long (P,); thresholds (N,) and inverse_coordinates
    (N, 3) or None.
    """
    files: list
    crop_boxes: list
    keypoints: torch.Tensor
    pairs: object
    permutation: torch.Tensor
    keypoint_size: int
    thresholds: object = None
    inverse_coordinates: object = None


def has_pck_files(path):
    """True when ``path`` holds a keypoints file (i.e. is a PCK dataset)."""
    return os.path.isfile(os.path.join(path, KEYPOINTS_FILE))


def rescale_keypoints(xy, from_size, to_size):
    """Map pixel coordinates between two resolutions of the same square image.

    Pixel centres sit at integer coordinates, so x at ``from_size`` maps to
    (x + 0.5) * to_size / from_size - 0.5 (the same geometry an image resize
    uses).

    Args:
        xy: float tensor (..., 2) in pixels at ``from_size``.
    Returns:
        float tensor (..., 2) in pixels at ``to_size``.
    """
    if from_size == to_size:
        return xy.clone()
    ratio = to_size / from_size
    return (xy + 0.5) * ratio - 0.5


def write_pck_files(out_dir, keypoints, pairs, permutation, thresholds=None, inverse_coordinates=None,
                    keypoint_size=None):
    """Write the keypoint files of a PCK dataset (images are written separately).

    Args:
        out_dir: dataset folder (created).
        keypoints: float (N, P, 3): x, y pixels at ``keypoint_size``, visibility 0/1.
        pairs: long (M, 2) image indices of fixed pairs, or None for random pairs.
        permutation: long (P,) keypoint order after a horizontal mirror.
        thresholds: optional float (N,) per-image PCK thresholds (original pixels).
        inverse_coordinates: optional float (N, 3) (x offset, y offset, scale);
            required together with ``thresholds``.
        keypoint_size: the resolution the keypoints are in; recorded in
            pck_meta.json (default: the largest size of an LMDB already in
            ``out_dir``, else not recorded).
    """
    keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
    if keypoints.dim() != 3 or keypoints.size(-1) != 3:
        raise ValueError(f'keypoints must be (N, P, 3), got {tuple(keypoints.shape)}')
    n, p, _ = keypoints.shape
    permutation = torch.as_tensor(permutation, dtype=torch.long).view(-1)
    if permutation.numel() != p or set(permutation.tolist()) != set(range(p)):
        raise ValueError(f'permutation must be a permutation of {p} keypoints, got {permutation.tolist()}')
    if (thresholds is None) != (inverse_coordinates is None):
        raise ValueError('thresholds and inverse_coordinates go together')
    os.makedirs(out_dir, exist_ok=True)
    if pairs is not None:
        pairs = torch.as_tensor(pairs, dtype=torch.long)
        if pairs.dim() != 2 or pairs.size(1) != 2 or (pairs.numel() and (pairs.min() < 0 or pairs.max() >= n)):
            raise ValueError(f'pairs must be (M, 2) indices below {n}')
        save_checkpoint(pairs, os.path.join(out_dir, PAIRS_FILE))
    elif os.path.exists(os.path.join(out_dir, PAIRS_FILE)):
        os.remove(os.path.join(out_dir, PAIRS_FILE))  # stale fixed pairs would override random ones
    if thresholds is not None:
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32).view(-1)
        inverse_coordinates = torch.as_tensor(inverse_coordinates, dtype=torch.float32)
        if thresholds.numel() != n or tuple(inverse_coordinates.shape) != (n, 3):
            raise ValueError('thresholds must be (N,) and inverse_coordinates (N, 3)')
        save_checkpoint(thresholds, os.path.join(out_dir, THRESHOLDS_FILE))
        save_checkpoint(inverse_coordinates, os.path.join(out_dir, INVERSE_FILE))
    save_checkpoint(permutation, os.path.join(out_dir, PERMUTATION_FILE))
    if keypoint_size is None and is_lmdb_folder(out_dir):
        keypoint_size = _largest_lmdb_size(out_dir)
    if keypoint_size is not None:
        with open(os.path.join(out_dir, META_FILE), 'w') as f:
            json.dump({'keypoint_size': int(keypoint_size)}, f)
    # keypoints.pt last: it is what marks the folder as a PCK dataset.
    save_checkpoint(keypoints, os.path.join(out_dir, KEYPOINTS_FILE))


def _largest_lmdb_size(path):
    with reader_env(path, refresh=True).begin() as txn:
        sizes = list_sizes(txn)
    return max(sizes) if sizes else None


def _load_tensor(path, what):
    value = load_checkpoint(path)
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} file '{path}' does not hold a tensor; prepare the dataset again") from None


class PCKDataset(torch.utils.data.Dataset):
    """Pairs of images with keypoints at resolution ``size``.

    Item ``i`` is a dict:
      ``imgsA``, ``imgsB``: float (3, S, S) in [-1, 1];
      ``kpsA``, ``kpsB``: float (P, 2) pixel x, y at size S;
      ``visA``, ``visB``: bool (P,) visibility;
      ``indexA``, ``indexB``: image indices; ``index``: the pair index i;
      with per-image thresholds also ``threshA``, ``threshB`` (original-image
      pixels) and ``scaleA``, ``scaleB`` (original pixels -> pixels at S), so
      the PCK radius at S is alpha * thresh * scale.

    Pairs: the fixed pairs of pairs.pt; without that file, or when
    ``num_pck_pairs`` is given, seeded random pairs (successive random
    perfect matchings of the images, never pairing an image with itself).
    ``randomize_pairs(seed)`` redraws random pairs (no-op for fixed ones).

    Attributes:
        permutation: long (P,) keypoint order after a mirror (identity if the
            dataset has none).
        keypoints: float (N, P, 3) at size S (x, y, visibility).
        fixed_pairs: bool, whether pairs come from pairs.pt.
    """

    def __init__(self, path, size, num_pck_pairs=None, seed=0, transform=None):
        self.images = MultiResolutionDataset(path, size, transform=transform)
        self.path = path
        self.size = int(size)
        keypoints_path = os.path.join(path, KEYPOINTS_FILE)
        if not os.path.isfile(keypoints_path):
            raise DatasetError(f"'{path}' has no {KEYPOINTS_FILE}, so it is not a PCK dataset; prepare one "
                               f"with prepare_data.py (SPair-71K, CUB or the synthetic world)")
        stored = _load_tensor(keypoints_path, 'keypoints').float()
        if stored.dim() != 3 or stored.size(-1) != 3 or stored.size(0) != len(self.images):
            raise UserError(f"'{keypoints_path}' has shape {tuple(stored.shape)}, expected "
                            f"({len(self.images)}, P, 3); prepare the dataset again")
        self.keypoint_size = self._keypoint_size()
        self.keypoints = stored.clone()
        self.keypoints[..., :2] = rescale_keypoints(stored[..., :2], self.keypoint_size, self.size)
        num_points = stored.size(1)

        permutation_path = os.path.join(path, PERMUTATION_FILE)
        if os.path.isfile(permutation_path):
            self.permutation = _load_tensor(permutation_path, 'permutation').long().view(-1)
        else:
            warnings.warn(f"'{path}' has no {PERMUTATION_FILE}; mirrored keypoints keep their order")
            self.permutation = torch.arange(num_points)
        if self.permutation.numel() != num_points:
            raise UserError(f"'{permutation_path}' has {self.permutation.numel()} entries for "
                            f"{num_points} keypoints; prepare the dataset again")

        thresholds_path = os.path.join(path, THRESHOLDS_FILE)
        inverse_path = os.path.join(path, INVERSE_FILE)
        if os.path.isfile(thresholds_path) != os.path.isfile(inverse_path):
            raise UserError(f"'{path}' has only one of {THRESHOLDS_FILE} and {INVERSE_FILE}; "
                            f"prepare the dataset again")
        if os.path.isfile(thresholds_path):
            self.thresholds = _load_tensor(thresholds_path, 'thresholds').float().view(-1)
            inverse = _load_tensor(inverse_path, 'inverse coordinates').float()
            # Scale maps original pixels to stored pixels; re-express it at size S.
            self.scales = inverse[:, 2] * (self.size / self.keypoint_size)
        else:
            self.thresholds = None
            self.scales = None

        self.seed = seed
        self.num_pck_pairs = num_pck_pairs
        pairs_path = os.path.join(path, PAIRS_FILE)
        self.fixed_pairs = num_pck_pairs is None and os.path.isfile(pairs_path)
        if self.fixed_pairs:
            self.pairs = _load_tensor(pairs_path, 'pairs').long()
            if self.pairs.dim() != 2 or self.pairs.size(1) != 2:
                raise UserError(f"'{pairs_path}' must hold an (M, 2) tensor; prepare the dataset again")
        else:
            if len(self.images) < 2:
                raise UserError(f"'{path}' has fewer than two images; random pairs need at least two")
            self.randomize_pairs(seed)

    def _keypoint_size(self):
        meta_path = os.path.join(self.path, META_FILE)
        if os.path.isfile(meta_path):
            try:
                with open(meta_path) as f:
                    return int(json.load(f)['keypoint_size'])
            except (ValueError, KeyError, TypeError):
                raise UserError(f"'{meta_path}' is corrupt; prepare the dataset again") from None
        size = _largest_lmdb_size(self.path)
        return size if size is not None else self.size

    def randomize_pairs(self, seed=None):
        """Draw new random pairs from ``seed`` (same seed -> same pairs); no-op
        when the pairs are fixed."""
        if self.fixed_pairs:
            return
        generator = torch.Generator()
        generator.manual_seed(self.seed if seed is None else int(seed))
        n = len(self.images)
        wanted = self.num_pck_pairs if self.num_pck_pairs is not None else n // 2
        chunks = []
        count = 0
        while count < wanted:
            order = torch.randperm(n, generator=generator)[: (n // 2) * 2].view(-1, 2)
            chunks.append(order)
            count += order.size(0)
        self.pairs = torch.cat(chunks)[:wanted]

    def __len__(self):
        return self.pairs.size(0)

    def __getitem__(self, index):
        index_a, index_b = (int(i) for i in self.pairs[index])
        item = {
            'imgsA': self.images[index_a], 'imgsB': self.images[index_b],
            'kpsA': self.keypoints[index_a, :, :2], 'kpsB': self.keypoints[index_b, :, :2],
            'visA': self.keypoints[index_a, :, 2] > 0, 'visB': self.keypoints[index_b, :, 2] > 0,
            'indexA': index_a, 'indexB': index_b, 'index': int(index),
        }
        if self.thresholds is not None:
            item.update(threshA=self.thresholds[index_a], threshB=self.thresholds[index_b],
                        scaleA=self.scales[index_a], scaleB=self.scales[index_b])
        return item
