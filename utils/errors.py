"""User-facing errors: one readable line, a non-zero exit, no traceback."""
import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, wrong option).

    The message says what is wrong and what to do about it.
    """


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
