"""Downloads that survive interruptions and parallel ranks.

``download_file`` streams into ``<dest>.part``, resumes a previous partial
download with an HTTP Range request, verifies the result (sha256 when given,
else the size the server announced) and renames it into place only when it
is complete. A lock file makes several processes (torchrun ranks) that ask
for the same file download it once: the others wait, then find it in place.
"""
import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile

from utils.errors import UserError
from utils.file_lock import file_lock

CHUNK_BYTES = 1 << 20


class DownloadError(UserError):
    """A file could not be downloaded or failed verification."""


def _manual_hint(url, dest):
    return f"download {url} yourself and put it at {os.path.abspath(dest)}"


def sha256_of_file(path):
    """Hex sha256 digest of a file's contents."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b''):
            digest.update(block)
    return digest.hexdigest()


def _total_size(response, offset):
    """The full size of the remote file, or None when the server does not say."""
    content_range = response.headers.get('Content-Range')
    if content_range:
        match = re.match(r'bytes\s+\d+-\d+/(\d+)', content_range)
        if match:
            return int(match.group(1))
    length = response.headers.get('Content-Length')
    if length is not None and length.isdigit():
        return offset + int(length)
    return None


def _fetch_once(url, part_path, progress, timeout):
    """Append the missing bytes of ``url`` to ``part_path``.

    Returns the total size the server announced (or None). Raises OSError /
    URLError subclasses on network trouble; the bytes received so far stay in
    ``part_path`` for the next attempt.
    """
    offset = os.path.getsize(part_path) if os.path.exists(part_path) else 0
    request = urllib.request.Request(url, headers={'User-Agent': 'gangealing-download'})
    if offset > 0:
        request.add_header('Range', f'bytes={offset}-')
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:
            # The partial file is not a prefix the server recognises: start over.
            os.remove(part_path)
            return _fetch_once(url, part_path, progress, timeout)
        raise
    with response:
        if offset > 0 and response.status != 206:
            offset = 0  # the server ignored the Range request and sends everything
        total = _total_size(response, offset)
        mode = 'ab' if offset > 0 else 'wb'
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                       desc=os.path.basename(part_path)[:-len('.part')], file=sys.stderr, leave=False)
        try:
            with open(part_path, mode) as f:
                while True:
                    try:
                        block = response.read(CHUNK_BYTES)
                    except http.client.IncompleteRead as e:
                        f.write(e.partial)  # keep what arrived, then let the caller resume
                        raise ConnectionError('connection closed mid-transfer') from None
                    if not block:
                        break
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
    received = os.path.getsize(part_path)
    if total is not None and received < total:
        raise ConnectionError(f'connection closed after {received} of {total} bytes')
    return total


def download_file(url, dest, sha256=None, progress=True, retries=3, timeout=30.0):
    """Download ``url`` to ``dest`` once, resumably and verified.

    If ``dest`` already exists it is returned as is (after a sha256 check when
    ``sha256`` is given). Otherwise bytes go to ``dest + '.part'``; an existing
    partial file is continued with an HTTP Range request. After the transfer
    the file is verified (sha256 if given, else the announced size) and
    renamed to ``dest``. Several processes calling this for the same ``dest``
    serialise on ``dest + '.lock'``, so the file is fetched once.

    Args:
        url: http(s) or file URL.
        dest: final path of the file.
        sha256: expected hex digest, or None.
        progress: show a tqdm progress bar on stderr.
        retries: extra attempts (each resuming) after a dropped connection.
        timeout: socket timeout in seconds.
    Returns:
        ``dest``.
    Raises:
        DownloadError: offline, HTTP error, dropped connection after all
            retries, or verification failure; the message names the URL and
            where to put the file by hand.
    """
    dest = os.fspath(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part_path = dest + '.part'
    with file_lock(dest + '.lock'):
        if os.path.exists(dest):
            if sha256 is not None and sha256_of_file(dest).lower() != sha256.lower():
                raise DownloadError(
                    f"{dest} exists but its sha256 does not match the expected {sha256}; "
                    f"delete it and run again, or {_manual_hint(url, dest)}")
            return dest
        total = None
        for attempt in range(retries + 1):
            try:
                total = _fetch_once(url, part_path, progress, timeout)
                break
            except urllib.error.HTTPError as e:
                raise DownloadError(
                    f"could not download {url}: HTTP {e.code} {e.reason}; {_manual_hint(url, dest)}") from None
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, OSError) as e:
                if attempt < retries and os.path.exists(part_path) and os.path.getsize(part_path) > 0:
                    continue  # some bytes arrived: resume
                reason = getattr(e, 'reason', None) or e
                kept = (f" ({os.path.getsize(part_path)} bytes kept in {part_path}; run again to resume)"
                        if os.path.exists(part_path) and os.path.getsize(part_path) > 0 else '')
                raise DownloadError(
                    f"could not download {url} ({reason}){kept}; if this machine is offline, "
                    f"{_manual_hint(url, dest)}") from None
        _verify(part_path, url, dest, sha256, total)
        os.replace(part_path, dest)
    return dest


def _verify(part_path, url, dest, sha256, total):
    if sha256 is not None:
        actual = sha256_of_file(part_path)
        if actual.lower() != sha256.lower():
            os.remove(part_path)
            raise DownloadError(
                f"the file downloaded from {url} is corrupt (sha256 {actual}, expected {sha256}); "
                f"run again, or {_manual_hint(url, dest)}")
    elif total is not None:
        size = os.path.getsize(part_path)
        if size != total:
            os.remove(part_path)
            raise DownloadError(
                f"the file downloaded from {url} has {size} bytes but the server announced {total}; "
                f"run again, or {_manual_hint(url, dest)}")


def extract_archive_folder(archive, data_dir, folder):
    """Extract a tar(.gz) or zip ``archive`` holding ``folder/`` into ``data_dir/folder``.

    Extraction goes to a temporary folder first, so an interrupted run never
    leaves a half-extracted ``folder`` that looks usable.
    """
    staging = os.path.join(data_dir, f'.{folder}.extracting')
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(staging)  # strips absolute and '..' member paths
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter='data')  # refuses links and paths leaving staging
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"could not extract '{archive}' ({e}); delete it and run again") from None
    extracted = os.path.join(staging, folder)
    if not os.path.isdir(extracted):
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"'{archive}' does not contain a '{folder}' folder; is it the right archive?")
    os.replace(extracted, os.path.join(data_dir, folder))
    shutil.rmtree(staging, ignore_errors=True)


def hub_checkpoint_dir():
    """``torch.hub.get_dir()/checkpoints`` (respects ``TORCH_HOME``)."""
    import torch.hub
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def resolve_weights(filename, url, explicit_path=None, sha256=None):
    """Find a weights file, downloading it into the torch hub cache if needed.

    Order: ``explicit_path`` (must exist), then
    ``torch.hub.get_dir()/checkpoints/<filename>``, then a download of
    ``url`` into that place.

    Returns:
        The local path of the weights.
    Raises:
        UserError: ``explicit_path`` is given but missing.
        DownloadError: the download failed (message says where to put it).
    """
    if explicit_path is not None:
        if not os.path.isfile(explicit_path):
            raise UserError(f"weights file '{explicit_path}' does not exist; check the path "
                            f"or leave the option out to download {url}")
        return explicit_path
    cached = os.path.join(hub_checkpoint_dir(), filename)
    if os.path.isfile(cached):
        return cached
    return download_file(url, cached, sha256=sha256)


def ensure_dataset_folder(url, data_dir, archive_name, folder, progress=True):
    """``<data_dir>/<folder>``, downloading ``url`` to ``<data_dir>/<archive_name>`` and
    extracting it first when the folder is missing (DownloadError offline)."""
    root = os.path.join(data_dir, folder)
    if not os.path.isdir(root):
        archive = download_file(url, os.path.join(data_dir, archive_name), progress=progress)
        extract_archive_folder(archive, data_dir, folder)
    return root


# The original release imported its model downloader and test settings from this
# module; they live in utils.pretrained (which builds on this module), so they are
# looked up there when first asked for.
_FORWARDED = ('download_model', 'PRETRAINED_TEST_HYPERPARAMS')


def __getattr__(name):
    if name in _FORWARDED:
        import utils.pretrained
        return getattr(utils.pretrained, name)
    raise AttributeError(f"module 'utils.download' has no attribute '{name}'")
