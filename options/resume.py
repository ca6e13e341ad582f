"""Which checkpoint a training run continues from, and the options it brings along.

``--resume`` picks the newest readable checkpoint of ``<results>/<exp-name>/checkpoints``
(none: the run starts as it would without the flag). A checkpoint written by
this project (it has 'format_version' and 'args') also supplies the run's
options: the component choices, architecture and schedule it was trained with
become the defaults, so a plain ``--resume`` (or ``--ckpt`` of such a file)
continues the same run; flags typed on the command line still win.
"""
import argparse
import os
import sys
from dataclasses import dataclass, field

from utils.argparse_tools import preliminary_values
from utils.checkpoint import CheckpointError, load_checkpoint, training_checkpoints

# Options that describe where and how this process runs, not the run itself:
# never taken from a checkpoint.
NOT_RESUMED = ('exp_name', 'results', 'ckpt', 'load_G_only', 'resume', 'device', 'local_rank', 'num_workers')


@dataclass
class ResumeSource:
    """path: the checkpoint to continue from (None: start as the flags say);
    by_resume: found by --resume; saved: {dest: value} options it brings."""
    path: str = None
    by_resume: bool = False
    saved: dict = field(default_factory=dict)


def _saved_options(ckpt):
    """The options stored by this project's trainer in ``ckpt``, or {} for other checkpoints."""
    if not isinstance(ckpt, dict) or 'format_version' not in ckpt or 't' not in ckpt:
        return {}
    args = ckpt.get('args')
    if not isinstance(args, argparse.Namespace):
        return {}
    return {dest: value for dest, value in vars(args).items() if dest not in NOT_RESUMED}


def latest_readable_checkpoint(results, exp_name):
    """(path, loaded checkpoint) of the newest readable checkpoint in results/exp_name/checkpoints, or None.

    Unreadable files (a checkpoint cut by a crash) are skipped with a warning, so that a run resumes from the
    last good one.
    """
    folder = os.path.join(results, exp_name, 'checkpoints')
    for _, path in training_checkpoints(folder):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            print(f'warning: skipping an unreadable checkpoint: {e}', file=sys.stderr)
    return None


def find_resume_source(parser, argv):
    """The checkpoint ``argv`` asks to continue from, and its saved options.

    Args:
        parser: a training parser with --exp-name, --results, --ckpt, --load_G_only and --resume.
        argv: the command line (without the program name).
    A newest checkpoint that cannot be read is reported and skipped for the
    one before it. ``--ckpt`` of a file (not a pretrained name) without
    ``--load_G_only`` brings its options too; with ``--resume`` and a
    checkpoint in the experiment, ``--ckpt`` and ``--load_G_only`` are not
    used (they describe how the run first started).
    """
    values = preliminary_values(parser, argv, ['exp_name', 'results', 'ckpt', 'resume', 'load_G_only'])
    if values['resume'] and values['exp_name']:
        latest = latest_readable_checkpoint(values['results'], values['exp_name'])
        if latest is not None:
            return ResumeSource(latest[0], True, _saved_options(latest[1]))
    path = values['ckpt']
    if path and not values['load_G_only'] and os.path.isfile(path):
        return ResumeSource(path, False, _saved_options(load_checkpoint(path)))
    return ResumeSource()
