"""Frames in order, for the video applications: a video file, a folder of frames or an LMDB.

(Not runnable: imported by the applications.)

``open_frames(opt)`` turns ``--real_data_path`` into a FrameSource;
``shared_batches`` hands each process its share of the batches and keeps
all processes in step, so the main process can gather every step's outputs
and write them in frame order. Only one batch per process is in memory.
"""
import os

from torch.utils.data import DataLoader, Subset

from applications.common.data import build_dataset
from utils.distributed import all_gather_tensor, get_rank, get_world_size
from utils.errors import UserError


class FrameSource:
    """Square frames at ``--real_size``: ``name`` (for output folders),
    ``frame_count`` (None when a video does not say) and ``fps`` (0 unknown)."""

    def __init__(self, name, frame_count, fps, batches):
        self.name, self.frame_count, self.fps, self._batches = name, frame_count, fps, batches

    def batches(self, batch_size, skip=None):
        """Yield (first frame index, (B, 3, S, S) in [-1, 1]); see datasets.video.VideoFrames.batches."""
        return self._batches(batch_size, skip)


def source_name(path):
    """A file or folder's base name without extension ('clips/cat.mp4' -> 'cat')."""
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def open_frames(opt):
    """The frames of ``--real_data_path``: a video file (decoded in a stream), or a
    folder of frames / an LMDB through the chosen --dataset_mode (a folder of
    image files is read as such whatever the mode says).

    ``opt.pad`` (None: centre crop) makes non-square frames square; it is
    refused for an LMDB, whose images are square already.
    """
    path = getattr(opt, 'real_data_path', None)
    if not path:
        raise UserError('--real_data_path is required: a video file, a folder of frames or an LMDB')
    if not os.path.exists(path):
        raise UserError(f"'{path}' does not exist; check --real_data_path")
    pad = getattr(opt, 'pad', None)
    if os.path.isfile(path):
        from datasets.video import VideoFrames
        video = VideoFrames(path, opt.real_size, pad or 'center')
        return FrameSource(source_name(path), video.frame_count, video.fps, video.batches)
    from datasets.lmdb_dataset import is_lmdb_folder
    if is_lmdb_folder(path):
        if pad is not None:
            raise UserError(f"--pad applies to videos and folders of frames; the LMDB '{path}' holds square "
                            f"images already (drop --pad)")
    elif opt.dataset_mode == 'lmdb':
        opt.dataset_mode = 'image_folder'  # a plain folder of frames
    if opt.dataset_mode == 'image_folder':
        opt.image_pad = pad or getattr(opt, 'image_pad', 'center')
        opt.image_pattern = getattr(opt, 'image_pattern', None)
    dataset = build_dataset(opt)

    def batches(batch_size, skip=None):
        count = len(dataset)
        numbers = [b for b in range((count + batch_size - 1) // batch_size) if skip is None or not skip(b)]
        indices = [i for b in numbers for i in range(b * batch_size, min(count, (b + 1) * batch_size))]
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                            num_workers=getattr(opt, 'num_workers', 0), drop_last=False)
        for number, images in zip(numbers, loader):
            yield number * batch_size, images
    return FrameSource(source_name(path), len(dataset), 0.0, batches)


def shared_batches(source, batch_size):
    """This process's batches (every world_size-th from its rank), then None forever.

    Step s of every process handles batch s * world_size + rank, so gathering
    step s's outputs in rank order gives consecutive frames.
    """
    rank, world = get_rank(), get_world_size()
    yield from source.batches(batch_size, skip=(lambda number: number % world != rank) if world > 1 else None)
    while True:
        yield None


def gather_step(outputs):
    """Gather a step's outputs (dict of tensors, N first) from every process in
    rank order (the tensors themselves in one process). Returns (dict, total N)."""
    gathered = {key: all_gather_tensor(value) for key, value in outputs.items()}
    total = next(iter(gathered.values())).shape[0] if gathered else 0
    return gathered, total
