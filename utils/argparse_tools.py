"""Small queries on an argparse parser: an option's action, its flag, what the user typed."""
import argparse

_UNSET = object()


class _ProbeError(Exception):
    pass


class _ProbeParser(argparse.ArgumentParser):
    """A parser that raises instead of printing its own (partial) usage and exiting."""

    def error(self, message):
        raise _ProbeError(message)


def find_action(parser, dest):
    """The argparse action storing ``dest``, or None when the parser has no such option."""
    for action in parser._actions:  # argparse exposes no public lookup by dest
        if action.dest == dest and action.option_strings:
            return action
    return None


def has_option(parser, flag):
    """Whether ``parser`` already has the option string ``flag`` (e.g. '--batch').

    Components add their flags to a parser shared by several of them; this lets
    each add a shared flag once.
    """
    return any(flag in action.option_strings for action in parser._actions)


def flag_name(parser, dest):
    """How the user writes option ``dest`` (e.g. 'exp_name' -> '--exp-name')."""
    action = find_action(parser, dest)
    if action is None:
        return f'--{dest}'
    long_flags = [s for s in action.option_strings if s.startswith('--')]
    return (long_flags or action.option_strings)[0]


def explicitly_given(parser, argv):
    """Names (dests) of the options present on the command line ``argv``.

    Parses once more with every option pre-set to a marker: argparse leaves
    values it finds already in the namespace alone unless an option is given,
    so whatever no longer holds the marker was typed by the user.
    """
    every_dest = vars(parser.parse_known_args(argv)[0])
    marked = argparse.Namespace(**{dest: _UNSET for dest in every_dest})
    parsed, _ = parser.parse_known_args(argv, namespace=marked)
    return {dest for dest, value in vars(parsed).items() if value is not _UNSET}


def preliminary_values(parser, argv, dests):
    """Values of a few options (``dests``) from ``argv``, ignoring everything else.

    The preliminary pass: required flags, unknown flags (of components not yet
    added) and -h/--help are not acted on. Defaults are the parser's current
    ones, so defaults changed by components applied so far count. Values are
    the raw strings (component names are checked by the caller); switches give booleans. A malformed
    selector (e.g. a flag without its value) is reported by ``parser.error``.
    """
    probe = _ProbeParser(prog=parser.prog, add_help=False, allow_abbrev=False)
    for dest in dests:
        action = find_action(parser, dest)
        if action is None:
            continue
        if action.nargs == 0:  # a switch such as --resume
            probe.add_argument(*action.option_strings, dest=dest, action='store_true',
                               default=parser.get_default(dest))
        else:
            probe.add_argument(*action.option_strings, dest=dest, type=str,
                               default=parser.get_default(dest))
    try:
        values, _ = probe.parse_known_args(argv)
    except _ProbeError as e:
        parser.error(str(e))
    return {dest: getattr(values, dest, None) for dest in dests}


def report_option_problems(parser, problems):
    """One ``parser.error`` (exit 2) listing every problem of ``problems`` (list of str), if there are any."""
    if problems:
        parser.error('; '.join(problems))
