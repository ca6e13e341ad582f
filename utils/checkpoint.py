"""Checkpoint I/O: atomic saves and allow-listed loads.

Saving writes to a temporary file in the destination folder, flushes and
fsyncs it, then renames it over the destination, so a crash mid-save never
leaves a truncated checkpoint behind and never destroys the previous one.

Loading uses ``torch.load(weights_only=True)``: only tensors, plain Python
containers and an explicit allow-list of classes may be unpickled, so a
checkpoint from an untrusted source cannot run code.
"""
import argparse
import os
import pickle
import re
import zipfile

import torch

from utils.atomic_io import atomic_write
from utils.errors import UserError

# Training checkpoints are named by iteration; temporary files start with a dot.
CHECKPOINT_NAME = re.compile(r'^(\d+)\.pt$')


def checkpoint_name(iteration):
    """The file name of the training checkpoint of ``iteration`` ('0001000.pt')."""
    return f'{int(iteration):07d}.pt'


def training_checkpoints(folder):
    """[(iteration, path)] of the training checkpoints in ``folder``, newest first
    (an empty list when the folder does not exist). Half-written files never
    carry a checkpoint name: saves go to a hidden temporary file and are renamed."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in names
             for m in [CHECKPOINT_NAME.match(name)] if m]
    return sorted(found, reverse=True)


class CheckpointError(UserError):
    """A checkpoint could not be read: missing, truncated, corrupt or unsafe."""


def _numpy_safe_globals():
    """numpy classes needed to rebuild plain numpy arrays: the RNG states of our
    training checkpoints of format version 1 (later ones hold tensors only and
    load with ``argparse.Namespace`` as the only extra class), and stats.

    Rebuilding an ndarray only allocates memory and fills it with bytes; any
    objects inside an object array go through the same restricted unpickler.
    """
    try:
        import numpy as np
    except ImportError:  # numpy is optional for loading
        return []
    found = [np.ndarray, np.dtype]
    core = getattr(np, '_core', None) or getattr(np, 'core', None)
    reconstruct = getattr(getattr(core, 'multiarray', None), '_reconstruct', None)
    if reconstruct is not None:
        found.append(reconstruct)
    # numpy >= 1.25 pickles dtypes as instances of per-type dtype classes.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return found


def checkpoint_safe_globals():
    """Classes (beyond torch's built-in allow-list) a checkpoint may contain.

    Official GANgealing checkpoints hold state dicts (tensors in OrderedDicts),
    Adam and learning-rate-scheduler state dicts (numbers, lists, dicts,
    tuples) and ``args``, an ``argparse.Namespace``.
    """
    return [argparse.Namespace] + _numpy_safe_globals()


def save_checkpoint(obj, path):
    """Save ``obj`` with ``torch.save`` to ``path`` atomically.

    The bytes go to a temporary file beside ``path`` (same filesystem, so the
    final ``os.replace`` is atomic); on any failure the temporary file is
    removed and an existing file at ``path`` is left untouched.

    Args:
        obj: anything ``torch.save`` accepts (usually a dict of state dicts).
        path: destination file; its folder is created if missing.
    Returns:
        ``path``.
    """
    return atomic_write(path, lambda f: torch.save(obj, f), durable=True)


def load_checkpoint(path, map_location='cpu'):
    """Load a checkpoint dict saved by ``torch.save`` without running code.

    Args:
        path: the checkpoint file.
        map_location: as in ``torch.load`` (default: everything on the CPU).
    Returns:
        The unpickled object (a dict for every checkpoint this project uses).
    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or its
            pickle refers to a class or function outside the allow-list.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is a folder, not a checkpoint file")
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refusals arrive as UnpicklingError; so do most corruptions.
        detail = load_error_detail(e)
        if 'global' in detail.lower():
            raise CheckpointError(
                f"checkpoint '{path}' refers to code or classes that are not allowed to be loaded "
                f"({detail}); only tensors, plain containers and argparse.Namespace are accepted. "
                f"Only use checkpoints from sources you trust, saved as plain state dicts") from None
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt or not a torch checkpoint ({detail}); "
            f"download or save it again") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            AttributeError, TypeError, IndexError) as e:
        detail = ' '.join(str(e).split())[:300] or type(e).__name__
        if isinstance(e, RuntimeError) and 'deserialize object on' in detail:
            raise CheckpointError(f"checkpoint '{path}' cannot be loaded onto {map_location}: {detail}") from None
        raise CheckpointError(
            f"checkpoint '{path}' could not be read; it is probably truncated or corrupt "
            f"({detail}); download or save it again") from None


def load_error_detail(error):
    """The informative part of a ``torch.load`` error (its weights-only refusal text is pages long), at
    most 300 characters on one line."""
    text = str(error).split('Check the documentation', 1)[0]
    kept = []
    for paragraph in text.split('\n\n'):
        paragraph = ' '.join(paragraph.split())
        if 'WeightsUnpickler error:' in paragraph:  # (weights-only refusals)
            paragraph = paragraph.split('WeightsUnpickler error:', 1)[1].strip()
        if paragraph and not paragraph.startswith('Weights only load failed'):
            kept.append(paragraph)
    return ' '.join(kept)[:300] or type(error).__name__
