"""Atomic file writes and folders: a crash never leaves a truncated file, or a folder
that looks complete, under the final name."""
import os
import shutil
import tempfile

from utils.errors import UserError


def atomic_write(path, write, mode='wb', durable=False):
    """Run ``write(file)`` on a hidden temporary file beside ``path``, then rename it over ``path``.

    The temporary file is in the destination folder (same filesystem, so the
    rename is atomic); on any failure it is removed and an existing file at
    ``path`` is left untouched.

    Args:
        path: destination; its folder is created if missing.
        write: callable receiving the open file object.
        mode: 'wb' for bytes, 'w' for UTF-8 text.
        durable: fsync the file and its folder, so the new file survives a power loss.
    Returns:
        ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.remove(tmp_path)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_folder(folder)
    return path


def _fsync_folder(folder):
    # Makes the rename itself durable; not possible on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- folders published whole
#
# A folder of many files (a dataset, a sequence of frames) is written into a
# hidden staging folder beside its final place, named after the final folder
# and the writing process, and renamed into place when complete. A run that
# is killed leaves only the staging folder, which looks unfinished; the next
# run writing the same folder removes it once its process is gone.

_STAGING_SUFFIX = '.partial'


def _staging_prefix(final):
    return f'.{os.path.basename(os.path.abspath(final))}.staging-'


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


def remove_stale_staging(final, suffix=_STAGING_SUFFIX):
    """Remove the staging folders (or files, by ``suffix``) of ``final`` left by runs whose
    process has ended. Returns their paths."""
    parent = os.path.dirname(os.path.abspath(final))
    prefix = _staging_prefix(final)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in os.listdir(parent):
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid = name[len(prefix):-len(suffix)].split('-')[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            path = os.path.join(parent, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
    return removed


def make_staging_folder(final):
    """A new hidden staging folder beside ``final`` (stale ones of ``final`` removed first)."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(final)
    return tempfile.mkdtemp(prefix=f'{_staging_prefix(final)}{os.getpid()}-', suffix=_STAGING_SUFFIX, dir=parent)


def make_staging_file(final, suffix='.tmp'):
    """A new hidden, empty staging file beside ``final`` for a long write (stale ones removed first)."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(final, suffix)
    fd, path = tempfile.mkstemp(prefix=f'{_staging_prefix(final)}{os.getpid()}-', suffix=suffix, dir=parent)
    os.close(fd)
    return path


def publish_folder(staging, final, replace=False):
    """Rename the complete ``staging`` folder to ``final``.

    ``final`` must be absent or an empty folder, unless ``replace``, which
    removes an existing ``final`` first (an earlier run's complete output).
    """
    if os.path.isdir(final) and (replace or not os.listdir(final)):
        shutil.rmtree(final) if replace else os.rmdir(final)
    os.replace(staging, final)
    return final


def check_output_folder(folder, flag='--out'):
    """Refuse, before any work, an output folder that cannot be created or written to.

    Nothing is created: the folder, or the nearest of its ancestors that
    exists, must be a writable folder.

    Raises:
        UserError: naming the file in the way or the folder that is not writable.
    """
    path = os.path.abspath(folder)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = 'it is a file' if existing == path else f"'{existing}' is a file, not a folder"
        raise UserError(f"cannot write to the output folder '{folder}': {what}; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to the output folder '{folder}': '{existing}' is not writable; "
                        f"choose another {flag}")
    return folder
