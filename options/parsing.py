"""The full parse of training and evaluation options (pix2pix/CycleGAN style).

1. static tiers: base + phase flags;
2. preliminary passes: learn the chosen generator, let it add flags (it may
   change the default loss and dataset mode), then the perceptual loss, then
   the dataset mode, each learnt from a re-parse with the current defaults;
3. final parse (only this one acts on -h/--help, so help lists every flag
   that applies), validation, printing and, for training, saving.

Before step 2, training looks for the checkpoint it continues from
(``--resume`` or ``--ckpt``; see ``options.resume``): its saved options
become the defaults of every pass.
"""
import os
import sys

from utils.distributed import is_main_process
from options.components import (EVAL_COMPONENTS, TRAINING_COMPONENTS, apply_component_options,
                                      check_choices_unchanged, list_registered_names)
from utils.argparse_tools import explicitly_given
from options.persistence import format_options, save_options
from options.resume import find_resume_source
from options.tiers import base_training_argparse
from options.validation import validate_eval_options, validate_training_options


def _arguments(argv):
    return list(sys.argv[1:] if argv is None else argv)


def build_training_parser(argv=None, saved=None):
    """The complete training parser for ``argv``: tiers plus the chosen components' flags.

    ``saved`` ({dest: value}, a resumed run's options) become the defaults.
    Returns (parser, {selector: (name, component class)}).
    """
    argv = _arguments(argv)
    parser, chosen = apply_component_options(base_training_argparse(), argv, TRAINING_COMPONENTS,
                                             is_train=True, saved=saved)
    return list_registered_names(parser, chosen), chosen


def parse_training_options(argv=None, save=True, adjust_parser=None, saved_options=None):
    """Parse, validate, print and save the training options.

    Args:
        argv: command-line arguments without the program name (default sys.argv[1:]).
        save: write opt.txt and opt.json into <results>/<exp-name> (main process only).
        adjust_parser: optional callable given the complete parser before the
            final parse (another training program adds its flags or defaults).
        saved_options: optional callable given the checkpoint's saved options
            ({dest: value}, see options.resume) and its path; it returns
            the ones this program takes as defaults. A program that reads a
            train.py checkpoint for something other than continuing that run
            keeps only what describes the model, not the run's schedule.
    Returns:
        argparse.Namespace with every option; ``generator`` holds the resolved name.
    Bad options end the program through argparse (usage, message, exit 2).
    """
    argv = _arguments(argv)
    source = find_resume_source(base_training_argparse(add_help=False), argv)
    if saved_options is not None:
        source.saved = dict(saved_options(source.saved, source.path))
    parser, chosen = build_training_parser(argv, saved=source.saved)
    if adjust_parser is not None:
        adjust_parser(parser)
    opt = parser.parse_args(argv)
    check_choices_unchanged(opt, chosen)
    notes = validate_training_options(opt, parser, explicitly_given(parser, argv), chosen)
    if source.by_resume:  # --ckpt and --load_G_only described the first start only
        opt.ckpt, opt.load_G_only = source.path, False
        notes['ckpt'] = 'the newest checkpoint of this experiment (--resume)'
    if is_main_process():
        print(format_options(opt, parser, notes), end='', flush=True)
        if source.saved:
            print(f'Options not given on the command line are those saved in {source.path}', flush=True)
        elif opt.resume and not source.path:
            print('--resume: no checkpoint of this experiment yet; starting from the beginning', flush=True)
    if save:
        save_options(opt, parser, os.path.join(opt.results, opt.exp_name), notes=notes)
    return opt


def parse_eval_options(parser, argv=None, verbose=True, unread=None, native_size=False):
    """Finish and run an evaluation parser (``base_eval_argparse()`` plus an application's flags).

    The chosen dataset mode adds its flags first (is_train=False); then the
    final parse, validation and, when ``verbose``, printing on the main process.
    ``unread`` ({dest: reason}) names the options the application does not
    read: given on the command line they are refused, as training refuses
    the options its configuration ignores. ``native_size``: the application
    also takes ``--real_size 0`` (images at the size they were stored at).
    Returns the argparse.Namespace.
    """
    argv = _arguments(argv)
    parser, chosen = apply_component_options(parser, argv, EVAL_COMPONENTS, is_train=False)
    list_registered_names(parser, chosen)
    opt = parser.parse_args(argv)
    check_choices_unchanged(opt, chosen)
    validate_eval_options(opt, parser, chosen, explicitly_given(parser, argv), unread, native_size)
    if getattr(opt, 'output_resolution', 0) is None:  # unset: the outputs keep the input resolution
        opt.output_resolution = opt.real_size
    if verbose and is_main_process():
        print(format_options(opt, parser), end='', flush=True)
    return opt
