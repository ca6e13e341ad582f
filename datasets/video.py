"""Frames of a video file as square images, streamed in batches.

A video is read once, front to back (decoding is sequential), so this is an
iterable rather than an indexed dataset: ``batches(n)`` yields float
(B, 3, size, size) tensors in [-1, 1], each frame made square the way
prepare_data makes images square (``center`` crop by default, or padded with
``border``/``zero``). Only one batch of frames is held at a time.

``IndexedVideoFrames`` adds access by frame number (a map-style dataset over
the video, decoding each asked frame on demand), for pages that show chosen
frames and averages over the first ones.
"""
import threading

import numpy as np
import torch

from datasets.transforms import make_square
from utils.errors import UserError
from utils.video_io import SeekableVideo, VideoReader

SQUARE_PAD_MODES = ('center', 'border', 'zero')  # the modes of PAD_MODES whose result is square


class VideoFrames:
    """The frames of ``path`` at ``size`` x ``size``.

    Opening checks the file (see utils.video_io.VideoReader) without keeping
    it open; every call to ``batches`` decodes the video afresh.

    Args:
        path: any file FFmpeg decodes (mp4, mov, webm, gif, ...).
        size: side of the square frames produced.
        pad: 'center', 'border' or 'zero' (see datasets.transforms).
    Attributes:
        width, height, fps, frame_count: of the source video (frame_count may be None).
    """

    def __init__(self, path, size, pad='center'):
        if pad not in SQUARE_PAD_MODES:
            raise UserError(f"pad mode '{pad}' does not give square frames; choose from "
                            f"{', '.join(SQUARE_PAD_MODES)}")
        self.path, self.size, self.pad = path, int(size), pad
        with VideoReader(path) as reader:
            self.width, self.height = reader.width, reader.height
            self.fps, self.frame_count = reader.fps, reader.frame_count

    def square(self, frame):
        """uint8 (H, W, 3) source frame -> uint8 (size, size, 3)."""
        return make_square(frame, self.size, self.pad)

    def batches(self, batch_size, skip=None):
        """Yield (first frame index, float (B, 3, size, size) in [-1, 1]) in order.

        ``skip(batch_number)``, when given, says which batches to pass over
        without converting their frames (they are still decoded: the stream is
        sequential); used to share a video between processes.
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        with VideoReader(self.path) as reader:
            start = 0
            for number, frames in enumerate(reader.batches(batch_size)):
                if skip is None or not skip(number):
                    yield start, frame_to_tensor(np.stack([self.square(frame) for frame in frames]))
                start += len(frames)


def frame_to_tensor(squares):
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [-1, 1]."""
    array = np.require(squares, requirements=('C', 'W'))  # torch wants a writable array
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


class IndexedVideoFrames(VideoFrames):
    """The frames of a video file by number, made square as ``VideoFrames`` makes them.

    ``dataset[i]`` is frame i as float (3, size, size) in [-1, 1], decoded when
    asked (see utils.video_io.SeekableVideo; reading in order does not seek);
    ``len`` is the exact number of frames. Safe to share between threads.
    ``batches`` still streams the whole video in order.
    """

    def __init__(self, path, size, pad='center'):
        super().__init__(path, size, pad)
        self._video = SeekableVideo(path)
        self.frame_count = self._video.frame_count
        self._lock = threading.Lock()

    def __len__(self):
        return self.frame_count

    def native_frame(self, index):
        """Frame ``index`` at the video's own size: uint8 (height, width, 3)."""
        if not 0 <= index < len(self):
            raise IndexError(f'frame {index} is out of range: the video has {len(self)} frames')
        with self._lock:
            return self._video.frame(int(index))

    def __getitem__(self, index):
        return frame_to_tensor(self.square(self.native_frame(index))[None])[0]

    def close(self):
        with self._lock:
            self._video.close()

    def __getstate__(self):  # for worker processes: each opens the file itself
        state = dict(self.__dict__)
        state['_lock'] = None
        state['_video'] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._video = SeekableVideo(self.path)
