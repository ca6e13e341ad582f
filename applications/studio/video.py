"""The edit studio's video: the propagated mp4 of a whole video.

Every frame of the video is decoded in order (a stream: one batch in memory),
aligned at --real_size exactly as the previews are, and the label splatted
by ``applications.video_propagation.propagate_frames`` (what
``applications.mixed_reality`` runs) onto the frame's square at the video's
own resolution (sigma scaled with it). The square goes back into the frame,
so the mp4 has the input's size and frame rate (a centre crop leaves the
sides unedited; padding bars are cut off). It is encoded as frames come and
written under a temporary name, renamed when complete (utils.video_io.VideoWriter).
"""
import numpy as np

from applications.video_propagation import propagate_frames
from datasets.transforms import native_square, unsquare
from datasets.video import frame_to_tensor
from utils.video_io import VideoReader, VideoWriter

DEFAULT_FPS = 30.0  # for a video that does not say its frame rate
CANVAS_BYTES = 256 * 1024 * 1024  # float copies of native-size frames held per batch


def video_facts(video):
    """What the page shows of an IndexedVideoFrames: frames, size, frame rate, pad mode."""
    return {'frames': len(video), 'width': video.width, 'height': video.height,
            'fps': video.fps or None, 'export_fps': video.fps or DEFAULT_FPS, 'pad': video.pad}


def frames_per_batch(video, batch):
    """At most ``batch`` frames, fewer when their native-size squares would pass CANVAS_BYTES."""
    side = max(video.width, video.height) if video.pad != 'center' else min(video.width, video.height)
    per_frame = side * side * 3 * 4 * 2  # the float canvas and the splat's result
    return max(1, min(int(batch), CANVAS_BYTES // per_frame))


def write_propagated_video(t, opt, video, label, path, device, hold, progress=None, batch=None):
    """Propagate ``label`` onto every frame of ``video`` and encode the result at ``path``.

    Args:
        t, opt: the transformer and the request's options (sigma, opacity, cluster, ...).
        video: datasets.video.IndexedVideoFrames (its path, pad mode and frame rate).
        label: an applications.propagation.Label.
        hold: a context manager factory held around each batch's model work.
        progress: called with the number of frames done after each batch.
        batch: frames per batch (default --batch; fewer for large frames, see frames_per_batch).
    Returns:
        the number of frames written.
    """
    batch = frames_per_batch(video, batch or opt.batch or 1)
    done = 0
    with VideoReader(video.path) as reader, VideoWriter(path, video.fps or DEFAULT_FPS) as writer:
        for frames in reader.batches(batch):
            images = frame_to_tensor(np.stack([video.square(frame) for frame in frames])).to(device)
            squares = [native_square(frame, video.pad) for frame in frames]
            canvas = None
            if squares[0].shape[0] != images.size(-1):
                canvas = frame_to_tensor(np.stack(squares)).to(device)
            with hold():
                edited = propagate_frames(t, opt, images, [None], [label], canvas=canvas)['propagated']
            edited = edited.cpu().numpy()
            writer.write(np.stack([unsquare(square, frame, video.pad) for square, frame in zip(edited, frames)]))
            done += len(frames)
            if progress is not None:
                progress(done)
    return done
