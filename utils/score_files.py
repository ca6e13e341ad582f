"""Flow scores: one number per dataset image saying how smoothly the trained
transformer could align it, and the filter that keeps the best-scoring images.

A score is the negated total variation of the image's residual flow (see
``models.spatial_transformers.flow_total_variation``): 0 for a perfectly
smooth flow, more negative for rougher ones. Outliers (wrong objects, bad
crops) need rough flows, so they sink to the bottom.

File format (shared with the original GANgealing): ``flow_scores.pt`` inside
the dataset folder, a 1-D float tensor with one score per image in dataset
order, saved with ``torch.save``.
"""
import os

import torch

from utils.atomic_io import atomic_write
from utils.checkpoint import load_error_detail
from utils.errors import UserError

FLOW_SCORES_FILE = 'flow_scores.pt'


def flow_scores_path(dataset_path):
    """Where the flow scores of the dataset at ``dataset_path`` are kept."""
    return os.path.join(dataset_path, FLOW_SCORES_FILE)


def save_flow_scores(scores, path):
    """Write (N,) scores as a CPU float tensor, atomically."""
    scores = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    return atomic_write(path, lambda f: torch.save(scores, f))


def load_flow_scores(path, dataset_length=None):
    """Read a flow-score file and check that it fits the dataset.

    Args:
        path: a file written by ``applications.flow_scores`` (or the original's).
        dataset_length: number of images of the dataset the scores are used
            with; None skips the check.
    Returns:
        (N,) float tensor of scores (CPU).
    Raises:
        UserError: missing or unreadable file, not a 1-D tensor of finite
            numbers, or a length other than ``dataset_length`` (scores of
            another dataset).
    """
    if not os.path.isfile(path):
        raise UserError(f"flow scores '{path}' do not exist; compute them with "
                        f"python -m applications.flow_scores, or check --flow_scores")
    try:
        scores = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # any unpickling problem means the file is not a score file
        raise UserError(f"flow scores '{path}' could not be read: not a score file, or a corrupt one "
                        f"({load_error_detail(e)}); compute them with python -m applications.flow_scores") from None
    if not torch.is_tensor(scores) or scores.dim() != 1 or not scores.is_floating_point():
        what = f'a {tuple(scores.shape)} {scores.dtype} tensor' if torch.is_tensor(scores) else type(scores).__name__
        raise UserError(f"flow scores '{path}' must hold a 1-D float tensor (one score per image), "
                        f"found {what}")
    if not torch.isfinite(scores).all():
        raise UserError(f"flow scores '{path}' contain non-finite values; compute them again")
    if dataset_length is not None and scores.numel() != dataset_length:
        raise UserError(f"flow scores '{path}' hold {scores.numel()} scores but the dataset has "
                        f"{dataset_length} images: they belong to another dataset; compute them for this "
                        f"one with python -m applications.flow_scores")
    return scores.float()


def check_fraction_retained(fraction):
    """Raise UserError unless 0 < fraction <= 1."""
    if not 0 < fraction <= 1:
        raise UserError(f'--fraction_retained must be in (0, 1] (a fraction of the images to keep), '
                        f'got {fraction}')


def high_score_indices(scores, fraction_retained):
    """Indices of the images whose score is above the (1 - F) quantile.

    As in the original, an image is kept when its score is strictly greater
    than ``torch.quantile(scores, 1 - fraction_retained)``; ``fraction_retained``
    of 1 keeps every image (the strict comparison would drop the lowest).

    Args:
        scores: (N,) scores, higher is better.
        fraction_retained: F in (0, 1].
    Returns:
        (M,) long tensor of kept indices in increasing order (M about F * N).
    """
    check_fraction_retained(fraction_retained)
    scores = torch.as_tensor(scores).float().reshape(-1)
    if fraction_retained >= 1:
        return torch.arange(scores.numel())
    threshold = torch.quantile(scores, 1 - fraction_retained)
    return torch.nonzero(scores > threshold).reshape(-1)
