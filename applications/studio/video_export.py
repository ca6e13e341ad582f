"""The edit studio's video: the propagated mp4 of a whole video.

The frames come in order, one batch in memory at a time, from a video file
(decoded as a stream) or from the dataset (a folder of frames or an LMDB,
given a frame rate with --fps). Each batch is aligned at --real_size exactly
as the previews are and the label splatted by
``applications.common.video_propagation.propagate_frames`` (what
``applications.mixed_reality`` runs). For a video file the splat lands on
the frame's square at the video's own resolution (sigma scaled with it) and
the square goes back into the frame, so the mp4 has the input's size and
frame rate (a centre crop leaves the sides unedited; padding bars are cut
off); a dataset's frames are its --real_size squares. The mp4 is encoded as
frames come and written under a temporary name, renamed when complete
(utils.video_io.VideoWriter).
"""
import numpy as np
import torch

from applications.common.video_propagation import propagate_frames
from datasets.transforms import native_square, unsquare
from datasets.video import IndexedVideoFrames, frame_to_tensor
from utils.video_io import VideoReader, VideoWriter

DEFAULT_FPS = 30.0  # for a video that does not say its frame rate
CANVAS_BYTES = 256 * 1024 * 1024  # float copies of native-size frames held per batch


def video_facts(frames, fps=None, size=None):
    """What the page shows of the frames an mp4 can be made of, or None when there are none.

    Args:
        frames: datasets.video.IndexedVideoFrames, or a dataset of square images.
        fps: --fps (None: a video file's own rate; a dataset then has no video).
        size: side of a dataset's images (--real_size).
    Returns:
        {'frames', 'width', 'height', 'fps' (the source's, None if unknown),
        'export_fps' (what the mp4 gets), 'pad' (a video file's pad mode, else None)}.
    """
    if isinstance(frames, IndexedVideoFrames):
        rate = fps or frames.fps or DEFAULT_FPS
        return {'frames': len(frames), 'width': frames.width, 'height': frames.height, 'fps': frames.fps or None,
                'export_fps': rate, 'pad': frames.pad}
    if fps is None:
        return None
    return {'frames': len(frames), 'width': size, 'height': size, 'fps': fps, 'export_fps': fps, 'pad': None}


def frames_per_batch(video, batch):
    """At most ``batch`` frames, fewer when their native-size squares would pass CANVAS_BYTES."""
    side = max(video.width, video.height) if video.pad != 'center' else min(video.width, video.height)
    per_frame = side * side * 3 * 4 * 2  # the float canvas and the splat's result
    return max(1, min(int(batch), CANVAS_BYTES // per_frame))


def _video_batches(video, batch):
    """Yield (squares at --real_size (B, 3, S, S), the squares at the video's scale or None when that
    is S, the decoded frames) of a video file, in order."""
    with VideoReader(video.path) as reader:
        for frames in reader.batches(frames_per_batch(video, batch)):
            images = frame_to_tensor(np.stack([video.square(frame) for frame in frames]))
            squares = [native_square(frame, video.pad) for frame in frames]
            canvas = frame_to_tensor(np.stack(squares)) if squares[0].shape[0] != images.size(-1) else None
            yield images, canvas, frames


def _dataset_batches(dataset, batch):
    """Yield (images (B, 3, S, S), None, None) of a dataset's images in index order."""
    for start in range(0, len(dataset), batch):
        yield torch.stack([dataset[i] for i in range(start, min(len(dataset), start + batch))]), None, None


def write_propagated_video(t, opt, frames, fps, label, path, device, hold, progress=None, batch=None):
    """Propagate ``label`` onto every frame and encode the result at ``path``.

    Args:
        t, opt: the transformer and the request's options (sigma, opacity, cluster, ...).
        frames: datasets.video.IndexedVideoFrames (its path, pad mode and size are
            used), or a dataset of square images in frame order.
        fps: frames per second of the mp4.
        label: an applications.common.propagation.Label.
        hold: a context manager factory held around each batch's model work.
        progress: called with the number of frames done after each batch.
        batch: frames per batch (default --batch; fewer for large frames, see frames_per_batch).
    Returns:
        the number of frames written.
    """
    batch = int(batch or opt.batch or 1)
    is_video = isinstance(frames, IndexedVideoFrames)
    batches = _video_batches(frames, batch) if is_video else _dataset_batches(frames, batch)
    done = 0
    with VideoWriter(path, fps) as writer:
        for images, canvas, decoded in batches:
            with hold():
                edited = propagate_frames(t, opt, images.to(device), [None], [label],
                                          canvas=None if canvas is None else canvas.to(device))['propagated']
            edited = edited.cpu().numpy()
            if is_video:
                edited = np.stack([unsquare(square, frame, frames.pad) for square, frame in zip(edited, decoded)])
            writer.write(edited)
            done += len(edited)
            if progress is not None:
                progress(done)
    return done
