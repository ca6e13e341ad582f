"""Atomic file writes: a crash never leaves a truncated file under the final name."""
import os
import tempfile


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
