"""A folder of image files, made square and resized when read."""
import glob
import os

from torch.utils.data import Dataset

from datasets.transforms import PAD_MODES, make_square
from utils.errors import UserError
from utils.image_io import array_to_tensor, read_image_file

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff', '.gif')


def find_images(path, pattern=None):
    """Sorted image files under ``path``.

    Args:
        path: a folder.
        pattern: glob pattern relative to ``path`` (``**`` recurses); None
            means every file with a common image extension, recursively.
    Raises:
        UserError: ``path`` is not a folder, or nothing matches.
    """
    if not os.path.isdir(path):
        raise UserError(f"image folder '{path}' does not exist or is not a folder; check the path")
    if pattern is None:
        files = [f for f in glob.glob(os.path.join(glob.escape(path), '**', '*'), recursive=True)
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        files = [f for f in glob.glob(os.path.join(glob.escape(path), pattern), recursive=True)
                 if os.path.isfile(f)]
    if not files:
        wanted = f"matching '{pattern}'" if pattern is not None else f"with extensions {', '.join(IMAGE_EXTENSIONS)}"
        raise UserError(f"no images {wanted} in '{path}'; check the folder or the pattern")
    return sorted(files)


class ImageFolderDataset(Dataset):
    """Images of a folder as float (3, size, size) tensors in [-1, 1].

    Each file is read, made square with pad mode ``pad`` (see
    datasets.transforms) and resized on the fly; ``transform``, when given, is
    applied to the resulting tensor.
    """

    def __init__(self, path, size, pad='center', pattern=None, transform=None):
        if pad not in PAD_MODES:
            raise UserError(f"unknown pad mode '{pad}'; choose from {', '.join(PAD_MODES)}")
        self.files = find_images(path, pattern)
        self.size = int(size)
        self.pad = pad
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path = self.files[index]
        try:
            array = read_image_file(path)
        except (OSError, ValueError, SyntaxError) as e:
            raise UserError(f"could not read image '{path}' ({e}); remove or replace it") from None
        image = array_to_tensor(make_square(array, self.size, self.pad))
        if self.transform is not None:
            image = self.transform(image)
        return image
