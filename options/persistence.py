"""Printing options and saving them as opt.txt (for people) and opt.json (for programs).

opt.txt has one ``name: value`` line per option; options that differ from
their default end with ``  [default: d]`` and adjusted ones carry a note.
opt.json holds ``{"format_version": 1, "options": {name: value}}`` and
rebuilds the Namespace with ``load_options_json``. Files are written to a
temporary file in the same folder and renamed, so a reader never sees half a
file; only the main process writes.
"""
import argparse
import json
import os

from utils.atomic_io import atomic_write
from utils.distributed import is_main_process
from utils.errors import UserError

OPTIONS_TEXT = 'opt.txt'
OPTIONS_JSON = 'opt.json'
JSON_FORMAT_VERSION = 1
_JSON_SCALARS = (str, int, float, bool, type(None))


def format_options(opt, parser, notes=None):
    """The options as text: a header, one line per option (sorted by name), a footer.

    Args:
        opt: parsed options.
        parser: the parser that produced them (for the defaults).
        notes: optional {dest: text} appended in parentheses.
    """
    notes = notes or {}
    lines = ['----------------- Options ---------------']
    for name, value in sorted(vars(opt).items()):
        line = f'{name}: {value}'
        default = parser.get_default(name)
        if value != default:
            line += f'  [default: {default}]'
        if name in notes:
            line += f'  ({notes[name]})'
        lines.append(line)
    lines.append('----------------- End -------------------')
    return '\n'.join(lines) + '\n'


def _json_ready(name, value):
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _JSON_SCALARS) for v in value):
        return list(value)
    raise ValueError(f'option {name!r} has a value of type {type(value).__name__} that opt.json '
                     f'cannot hold; options must be strings, numbers, booleans, None or lists of them')


def options_to_json(opt):
    """The JSON text of opt.json for ``opt`` (ValueError for values JSON cannot hold exactly)."""
    options = {name: _json_ready(name, value) for name, value in sorted(vars(opt).items())}
    document = {'format_version': JSON_FORMAT_VERSION, 'options': options}
    try:
        return json.dumps(document, indent=2, allow_nan=False) + '\n'
    except ValueError as e:
        raise ValueError(f'options cannot be written as JSON: {e}') from None


def write_text_atomically(path, text):
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    atomic_write(path, lambda f: f.write(text), mode='w', durable=True)

def save_options(opt, parser, directory, notes=None):
    """Save ``opt`` as ``directory``/opt.txt and ``directory``/opt.json (main process only).

    Args:
        opt: parsed options.
        parser: the parser that produced them (for the defaults in opt.txt).
        directory: the experiment folder; created when missing.
        notes: optional {dest: text} shown in opt.txt.
    Returns:
        (text path, json path), or None on processes other than the main one.
    Both texts are built before anything is written, so an unsavable option
    leaves earlier files untouched.
    """
    if not is_main_process():
        return None
    text = format_options(opt, parser, notes)
    document = options_to_json(opt)
    text_path = os.path.join(directory, OPTIONS_TEXT)
    json_path = os.path.join(directory, OPTIONS_JSON)
    try:
        os.makedirs(directory, exist_ok=True)
        write_text_atomically(text_path, text)
        write_text_atomically(json_path, document)
    except OSError as e:
        raise UserError(f'cannot save the options in {directory}: {e.strerror or e}; choose a writable '
                        f'--results folder') from None
    return text_path, json_path


def load_options_json(path):
    """The argparse.Namespace saved in an opt.json file (see ``save_options``).

    Raises UserError when the file is missing, unreadable or not an opt.json.
    """
    try:
        with open(path, encoding='utf-8') as f:
            document = json.load(f)
    except FileNotFoundError:
        raise UserError(f'options file {path} does not exist; give the opt.json of a training run '
                        f'(<results>/<exp-name>/opt.json)') from None
    except (OSError, ValueError) as e:
        raise UserError(f'cannot read options file {path}: {e}') from None
    options = document.get('options') if isinstance(document, dict) else None
    if not isinstance(options, dict):
        raise UserError(f'{path} is not an options file written by this project (no "options" table)')
    version = document.get('format_version')
    if version != JSON_FORMAT_VERSION:
        raise UserError(f'{path} has options format version {version}; this version reads '
                        f'{JSON_FORMAT_VERSION}')
    return argparse.Namespace(**options)
