"""LMDB image datasets at one or several resolutions.

Layout (shared with the original GANgealing datasets): key
``f"{size}-{index:05d}"`` holds the encoded image ``index`` at ``size``; key
``length`` holds the image count as decimal text. ``length`` is written last,
so a folder whose write was interrupted has no ``length`` and is refused.
"""
import os

import lmdb
import torch
from torch.utils.data import Dataset

from utils.errors import DatasetError, UserError
from utils.image_io import array_to_tensor, decode_image_bytes, encode_image

LENGTH_KEY = b'length'
# Address space reserved for the database; the file only grows as data arrives.
MAP_SIZE_BYTES = 1 << 40
WRITE_BATCH = 256


def image_key(size, index):
    """The LMDB key of image ``index`` at resolution ``size``."""
    return f'{size}-{index:05d}'.encode('utf-8')


def is_lmdb_folder(path):
    """True when ``path`` is a folder holding an LMDB environment."""
    return os.path.isfile(os.path.join(path, 'data.mdb'))


# One read-only environment per folder and process: LMDB refuses to open the
# same environment twice in a process, and several datasets may share a folder.
# A forked child (a DataLoader worker) must not use its parent's environment:
# it closes the inherited copy (only its own mapping goes) and opens its own.
_READERS = {}


def _file_identity(path):
    try:
        info = os.stat(os.path.join(path, 'data.mdb'))
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def reader_env(path, refresh=False):
    """The shared read-only LMDB environment of ``path`` in this process.

    ``refresh``: reopen it if data.mdb changed on disk since it was opened
    (e.g. the dataset was prepared again).
    """
    key = os.path.realpath(path)
    entry = _READERS.get(key)
    stale = entry is not None and (entry[1] != os.getpid() or (refresh and entry[2] != _file_identity(path)))
    if stale:
        try:
            entry[0].close()
        except lmdb.Error:
            pass
        entry = None
    if entry is None:
        try:
            env = lmdb.open(path, max_readers=126, readonly=True, lock=False,
                            readahead=False, meminit=False)
        except lmdb.Error as e:
            raise UserError(f"could not open dataset '{path}': {e}") from None
        entry = _READERS[key] = (env, os.getpid(), _file_identity(path))
    return entry[0]


def close_reader(path):
    """Close this process's shared reader of ``path`` (before writing to it)."""
    entry = _READERS.pop(os.path.realpath(path), None)
    if entry is not None:
        entry[0].close()


def list_sizes(txn):
    """Sorted resolutions present in an open LMDB transaction.

    Jumps from one size prefix to the next with the cursor, so it costs one
    seek per size rather than a scan over every key.
    """
    sizes = []
    cursor = txn.cursor()
    found = cursor.first()
    while found:
        key = cursor.key().decode('utf-8', errors='replace')
        prefix, dash, _ = key.partition('-')
        if dash and prefix.isdigit():
            sizes.append(int(prefix))
            # '.' sorts right after '-': jump past every key of this size.
            found = cursor.set_range(f'{prefix}.'.encode('utf-8'))
        else:
            found = cursor.next()
    return sorted(set(sizes))


class LMDBWriter:
    """Write an LMDB image dataset incrementally; ``finish`` marks it complete.

    Use as a context manager; leaving the block without ``finish`` (an error,
    an interrupt) leaves no ``length`` key, so readers refuse the folder.
    """

    def __init__(self, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = out_dir
        close_reader(out_dir)
        self.env = lmdb.open(out_dir, map_size=MAP_SIZE_BYTES, readahead=False, meminit=False)
        with self.env.begin(write=True) as txn:
            txn.delete(LENGTH_KEY)  # an old dataset here is incomplete until finish()
        self._pending = []

    def put(self, size, index, encoded):
        """Queue encoded image bytes for image ``index`` at ``size``."""
        self._pending.append((image_key(size, index), encoded))
        if len(self._pending) >= WRITE_BATCH:
            self.flush()

    def flush(self):
        """Commit queued images in one transaction."""
        if not self._pending:
            return
        with self.env.begin(write=True) as txn:
            for key, value in self._pending:
                txn.put(key, value)
        self._pending = []

    def finish(self, length):
        """Commit everything, then write ``length``: the dataset is now complete."""
        self.flush()
        self.env.sync(True)
        with self.env.begin(write=True) as txn:
            txn.put(LENGTH_KEY, str(int(length)).encode('utf-8'))
        self.env.sync(True)

    def close(self):
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.flush()
        self.close()
        return False


def write_lmdb_dataset(out_dir, images_by_size, image_format='png'):
    """Write in-memory images as an LMDB dataset.

    Args:
        out_dir: destination folder (created).
        images_by_size: {size: sequence of uint8 (H, W, 3) arrays (or an
            (N, H, W, 3) uint8 array/tensor)}; every size must hold the same
            number of images, index i being the same image at every size.
        image_format: 'png' (lossless) or 'jpeg'.
    Returns:
        The number of images written.
    """
    counts = {size: len(images) for size, images in images_by_size.items()}
    if not counts:
        raise UserError('no image sizes given to write')
    if len(set(counts.values())) != 1:
        raise UserError(f'every size needs the same number of images, got {counts}')
    length = next(iter(counts.values()))
    with LMDBWriter(out_dir) as writer:
        for size, images in images_by_size.items():
            for index in range(length):
                image = images[index]
                if isinstance(image, torch.Tensor):
                    image = image.cpu().numpy()
                writer.put(int(size), index, encode_image(image, image_format))
        writer.finish(length)
    return length


class MultiResolutionDataset(Dataset):
    """Images of one resolution from an LMDB dataset.

    Items are float (3, S, S) tensors in [-1, 1] (S = ``resolution``; datasets
    prepared with ``--pad resize_small_side`` or ``none`` hold non-square
    images). ``transform``, when given, is applied to that tensor.

    The LMDB environment is opened per process and shared by every dataset of
    the folder, so the dataset is safe with DataLoader worker processes.

    Raises:
        UserError: missing path, a folder that is not a complete dataset, or a
            resolution that was not written (the message lists those present).
    """

    def __init__(self, path, resolution, transform=None):
        self.path = path
        self.resolution = int(resolution)
        self.transform = transform
        if not os.path.exists(path):
            raise DatasetError(f"dataset '{path}' does not exist; create it with prepare_data.py "
                               f"or check the path")
        if not is_lmdb_folder(path):
            raise DatasetError(f"'{path}' is not an LMDB dataset (no data.mdb inside); "
                            f"create it with prepare_data.py")
        with reader_env(path, refresh=True).begin(write=False) as txn:
            raw_length = txn.get(LENGTH_KEY)
            if raw_length is None:
                raise DatasetError(f"dataset '{path}' is incomplete (its preparation was interrupted); "
                                f"run prepare_data.py again")
            self.length = int(raw_length.decode('utf-8'))
            if self.length > 0 and txn.get(image_key(self.resolution, 0)) is None:
                sizes = list_sizes(txn)
                raise DatasetError(
                    f"dataset '{path}' has no images at resolution {self.resolution}; sizes present: "
                    f"{', '.join(map(str, sizes)) or 'none'}. Use one of those, or prepare the dataset "
                    f"again with prepare_data.py at resolution {self.resolution}")

    def __len__(self):
        return self.length

    def read_array(self, index):
        """Image ``index`` as a uint8 (H, W, 3) array."""
        if not 0 <= index < self.length:
            raise IndexError(f'image index {index} out of range for {self.length} images')
        with reader_env(self.path).begin(write=False) as txn:
            data = txn.get(image_key(self.resolution, index))
        if data is None:
            raise UserError(f"dataset '{self.path}' lacks image {index} at resolution {self.resolution}; "
                            f"prepare it again")
        return decode_image_bytes(data)

    def __getitem__(self, index):
        image = array_to_tensor(self.read_array(int(index)))
        if self.transform is not None:
            image = self.transform(image)
        return image
