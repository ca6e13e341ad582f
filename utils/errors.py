"""User-facing errors: one readable line, a non-zero exit, no traceback."""
import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, wrong option).

    The message says what is wrong and what to do about it.
    """


class WeightsMismatchError(UserError):
    """Saved weights that do not fit the model they are loaded into (another size, width or layout).

    The message speaks of the model's settings; code that owns command-line
    flags adds which flags set them.
    """


class DatasetError(UserError):
    """A dataset that is missing, incomplete, or lacks what was asked of it."""


def exit_on_user_error(main):
    """Decorate an entry point so a UserError prints ``error: ...`` and exits 1."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            sys.exit(1)
    return wrapped
