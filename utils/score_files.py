"""Flow scores: one number per dataset image saying how smoothly the trained
transformer could align it, and the filter that keeps the best-scoring images.

A score is the negated total variation of the image's residual flow (see
``models.spatial_transformers.flow_total_variation``): 0 for a perfectly
smooth flow, more negative for rougher ones. Outliers (wrong objects, bad
crops) need rough flows, so they sink to the bottom.

File format (shared with the original GANgealing): ``flow_scores.pt`` inside
the dataset folder, a 1-D float tensor with one score per image in dataset
order, saved with ``torch.save``. Other scores (``applications.common.image_scores``)
go to ``NAME_scores.pt`` in the same format.

Beside each file we write, a record ``NAME_scores.json`` says what made it:
the score's name, the sha256 of the checkpoint, the options that change the
scores, the number of images and the sha256 of the scores themselves (so a
record never vouches for a file written later by something else). The tensor
file stays what the original's users load with ``torch.load``. A file without
a record (e.g. the original's) is used as it is; one whose record names
another checkpoint, or no longer matches its scores, is refused.
"""
import hashlib
import json
import os

import torch

from utils.atomic_io import atomic_write
from utils.checkpoint import load_error_detail
from utils.errors import UserError

FLOW_SCORES_FILE = 'flow_scores.pt'
SCORES_SUFFIX = '_scores.pt'
RECORD_SUFFIX = '.json'
RECORD_VERSION = 1


def flow_scores_path(dataset_path, score='flow'):
    """Where the scores named ``score`` of the dataset at ``dataset_path`` are kept
    (``flow_scores.pt`` for the original's flow score, else ``NAME_scores.pt``)."""
    return os.path.join(dataset_path, score + SCORES_SUFFIX)


def record_path(path):
    """The record beside the score file ``path`` ('x/misfit_scores.pt' -> 'x/misfit_scores.json')."""
    root, _ = os.path.splitext(path)
    return root + RECORD_SUFFIX


def file_sha256(path, chunk=1 << 20):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def scores_sha256(scores):
    """Hex sha256 of (N,) scores as float32 values."""
    values = torch.as_tensor(scores).detach().float().cpu().reshape(-1).contiguous()
    return hashlib.sha256(values.numpy().tobytes()).hexdigest()


def scores_record(score, checkpoint_path, images, options):
    """What makes a score file: {'score', 'checkpoint_sha256', 'images', 'options'} (JSON-ready).

    Args:
        score: the score's name; checkpoint_path: the checkpoint file used;
        images: dataset length; options: {name: value} of the options that
            change the scores (JSON-serialisable values).
    """
    return {'version': RECORD_VERSION, 'score': score, 'checkpoint_sha256': file_sha256(checkpoint_path),
            'images': int(images), 'options': dict(sorted(options.items()))}


def read_record(path):
    """The record beside score file ``path``: a dict, or None when there is none.

    Raises:
        UserError: a record that is not readable JSON of the expected kind.
    """
    where = record_path(path)
    if not os.path.isfile(where):
        return None
    try:
        with open(where, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"the record '{where}' of scores '{path}' could not be read ({type(e).__name__}: {e}); "
                        'delete both files and compute the scores again') from None
    if not isinstance(record, dict) or not {'score', 'checkpoint_sha256', 'images'} <= set(record):
        raise UserError(f"'{where}' is not a record of scores '{path}'; delete both files and compute the "
                        'scores again')
    return record


def record_problem(path, scores, record, expected):
    """Why the score file ``path`` does not fit ``expected`` (None when it does).

    Args:
        scores: the file's (N,) scores; record: its record (None: no record);
        expected: the record the caller would write now (``scores_record``);
            only the keys it holds are compared (a user of the scores knows
            the checkpoint and the dataset, the scoring application every option).
    Returns:
        a readable reason, or None.
    """
    if record is None:
        return f"'{path}' has no record of what made it"
    if record.get('scores_sha256') != scores_sha256(scores):
        return f"the record beside '{path}' describes other scores (the file was replaced)"
    for key, what in (('score', 'score'), ('checkpoint_sha256', 'checkpoint'), ('images', 'number of images')):
        if key in expected and record.get(key) != expected[key]:
            shown = {'checkpoint_sha256': lambda v: f'{str(v)[:12]}...'}.get(key, repr)
            return (f"'{path}' was made with another {what} ({shown(record.get(key))}, now "
                    f"{shown(expected[key])})")
    for key, value in expected.get('options', {}).items():
        if record.get('options', {}).get(key, None) != value:
            return (f"'{path}' was made with {key}={record.get('options', {}).get(key)!r}, "
                    f"now {key}={value!r}")
    return None


def save_flow_scores(scores, path, record=None):
    """Write (N,) scores as a CPU float tensor, atomically, and ``record`` beside it.

    Without ``record`` an old record beside ``path`` is removed (it would
    describe other scores). The record is written after the scores and holds
    their sha256, so an interruption between the two leaves a record that no
    longer matches (refused) rather than one vouching for other scores.
    """
    scores = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    atomic_write(path, lambda f: torch.save(scores, f))
    where = record_path(path)
    if record is None:
        if os.path.isfile(where):
            os.remove(where)
        return path
    record = dict(record, scores_sha256=scores_sha256(scores))
    text = json.dumps(record, indent=2, sort_keys=True)
    atomic_write(where, lambda f: f.write(text), mode='w')
    return path


def load_flow_scores(path, dataset_length=None, checkpoint_path=None, check_record=True):
    """Read a score file and check that it fits the dataset (and the checkpoint).

    Args:
        path: a file written by ``applications.flow_scores`` (or the original's).
        dataset_length: number of images of the dataset the scores are used
            with; None skips the check.
        checkpoint_path: the checkpoint the scores are used with; when the
            file has a record, it must name this checkpoint. None skips the check.
        check_record: check the record beside the file, if any (the scoring
            application compares it itself).
    Returns:
        (N,) float tensor of scores (CPU).
    Raises:
        UserError: missing or unreadable file, not a 1-D tensor of finite
            numbers, a length other than ``dataset_length`` (scores of
            another dataset), or a record naming another checkpoint or
            describing other scores (stale scores).
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
    record = read_record(path) if check_record else None
    if record is not None:
        expected = {'checkpoint_sha256': file_sha256(checkpoint_path)} if checkpoint_path else {}
        problem = record_problem(path, scores.float(), record, expected)
        if problem:
            raise UserError(f'stale scores: {problem}; compute them again with python -m applications.flow_scores '
                            f"--score {record['score']} --recompute")
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
