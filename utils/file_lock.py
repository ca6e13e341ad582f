"""An exclusive lock between processes (torchrun ranks downloading or compiling the same file)."""
import contextlib
import os
import time

try:
    import fcntl
except ImportError:  # not POSIX: fall back to an exclusive-create lock file
    fcntl = None


@contextlib.contextmanager
def file_lock(lock_path, poll_seconds=0.2):
    """Hold an exclusive inter-process lock on ``lock_path`` (created if missing).

    With fcntl the lock is advisory and released by the OS if the holder dies;
    elsewhere an exclusive-create lock file is polled for.
    """
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    if fcntl is not None:
        with open(lock_path, 'a+') as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    while True:
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            time.sleep(poll_seconds)
    try:
        yield
    finally:
        os.close(fd)
        os.remove(lock_path)
