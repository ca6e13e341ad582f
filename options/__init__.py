"""The tiered option system: base, phase and component options.

    from options import parse_training_options
    opt = parse_training_options()            # train.py

    parser = base_eval_argparse()             # an application
    parser.add_argument('--my_flag', ...)
    opt = parse_eval_options(parser)

See docs/ARCHITECTURE.md for the registries components are found in.
"""
from options.components import resolve_generator_name
from options.parsing import build_training_parser, parse_eval_options, parse_training_options
from options.persistence import format_options, load_options_json, save_options
from options.tiers import base_eval_argparse, base_training_argparse

__all__ = ['base_training_argparse', 'base_eval_argparse', 'build_training_parser', 'parse_training_options',
           'parse_eval_options', 'save_options', 'load_options_json', 'format_options',
           'resolve_generator_name']
