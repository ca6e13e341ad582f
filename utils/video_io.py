"""Video files in and out, in-process through FFmpeg's libraries (PyAV).

Frames are uint8 (H, W, 3) RGB arrays. Reading streams: frames are decoded
one at a time and handed out in batches, so memory does not grow with the
video's length. Writing is H.264 (yuv420p, the profile browsers play) in an
mp4 container, encoded as frames arrive, under a hidden temporary name in the
destination folder that is renamed when the video is complete and removed if
anything fails, so a file under the final name is always a whole video.

PyAV is an optional dependency (``pip install .[video]``); importing this
module does not need it, using it does.
"""
import os
import tempfile
from fractions import Fraction

import numpy as np

from utils.atomic_io import make_staging_file
from utils.errors import UserError

VIDEO_EXTENSIONS = ('.mp4', '.mov', '.m4v', '.webm', '.mkv', '.avi', '.gif', '.mpg', '.mpeg', '.wmv', '.flv')


class VideoError(UserError):
    """A video that cannot be read or written (the message says which and why)."""


def _av():
    try:
        import av
    except ImportError:
        raise VideoError('reading and writing videos needs PyAV: pip install av '
                         '(or install this project with the [video] extra)') from None
    return av


def looks_like_video(path):
    """Whether ``path`` is a file whose extension is a common video (or GIF) extension."""
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def release_libav(owner, *names):
    """Drop ``owner``'s references to PyAV objects (set the attributes ``names`` to None).

    A codec context or a pixel-format converter runs its own pool of native
    threads, joined only when the object is freed. A process that forks (a
    DataLoader's workers) while such an object is alive gives the child an
    object whose threads do not exist there; if the child frees it (a
    reference dropped, a frame holding it torn down), libav waits for those
    threads forever. Readers and writers therefore free their libav objects
    as soon as they are closed, not when they are garbage-collected.
    """
    for name in names:
        setattr(owner, name, None)


class VideoReader:
    """Decode the first video stream of a file frame by frame.

    Opening reads the first frame, so a file that is not a video, has no
    video stream, has no frames or uses a codec FFmpeg cannot decode is
    refused here, before any work is done.

    Attributes:
        path, width, height: the file and its frame size in pixels.
        fps: frames per second (float; 0 when the file does not say).
        frame_count: the number of frames the container announces, or None
            when it does not (an estimate: some containers are wrong).
    Raises:
        VideoError: missing or unreadable file, no video stream, no frames.
    """

    def __init__(self, path):
        av = _av()
        self.path = path
        if not os.path.isfile(path):
            raise VideoError(f"video '{path}' does not exist or is not a file")
        try:
            self._container = av.open(path, mode='r')
        except av.FFmpegError as e:
            raise VideoError(f"'{path}' could not be opened as a video ({_reason(e)})") from None
        try:
            streams = self._container.streams.video
            if not streams:
                raise VideoError(f"'{path}' holds no video stream")
            stream = streams[0]
            stream.thread_type = 'AUTO'  # frame- and slice-threaded decoding where the codec allows
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.frame_count = int(stream.frames) if stream.frames else None
            self._frames = self._decode(stream)
            self._first = next(self._frames, None)
            if self._first is None:
                raise VideoError(f"video '{path}' has no frames")
        except BaseException:
            self.close()
            raise

    def _decode(self, stream):
        av = _av()
        try:
            for frame in self._container.decode(stream):
                yield frame.to_ndarray(format='rgb24')
        except av.FFmpegError as e:
            raise VideoError(f"video '{self.path}' could not be decoded ({_reason(e)})") from None

    def __iter__(self):
        """Yield every frame as uint8 (H, W, 3), once."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._frames

    def batches(self, batch_size):
        """Yield lists of at most ``batch_size`` frames (uint8 (H, W, 3) arrays), in order."""
        batch = []
        for frame in self:
            batch.append(frame)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self):
        container = getattr(self, '_container', None)
        if container is not None:
            container.close()
        release_libav(self, '_container', '_frames', '_first')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class SeekableVideo:
    """Frames of a video file by number, decoded on demand (for random access).

    Opening checks the file as ``VideoReader`` does, then reads its packets
    once without decoding them (fast: no pixels are made) to learn every
    frame's presentation timestamp; frame i is the i-th in presentation order.
    ``frame(i)`` seeks to the key frame at or before frame i and decodes
    forward to it; asking for a frame shortly after the last one read goes on
    decoding without a seek, so reading in order costs what streaming does.
    Files whose packets carry no timestamps are decoded from the start instead
    (going back then restarts the decoding). One frame is held at a time.
    Not thread-safe: callers share an instance under a lock.

    Attributes:
        path, width, height, fps: as ``VideoReader``'s.
        frame_count: the number of frames (packets holding a frame).
    Raises:
        VideoError: the file cannot be read, or has no video stream or no frames.
    """

    FORWARD_LIMIT = 48  # frames decoded forward before a seek is cheaper (key frames are rarely closer)

    def __init__(self, path):
        av = _av()
        with VideoReader(path) as reader:
            self.path, self.width, self.height, self.fps = path, reader.width, reader.height, reader.fps
        self._container = self._frames = None
        self._next = None  # the number of the frame the decoder hands out next, when known
        try:
            with av.open(path, mode='r') as container:
                stream = container.streams.video[0]
                # Packets an edit list marks as discarded hold frames the decoder never shows.
                stamps = [packet.pts for packet in container.demux(stream)
                          if packet.size > 0 and not packet.is_discard]
        except av.FFmpegError as e:
            raise VideoError(f"video '{path}' could not be read ({_reason(e)})") from None
        if not stamps:
            raise VideoError(f"video '{path}' has no frames")
        self.frame_count = len(stamps)
        usable = None not in stamps and len(set(stamps)) == len(stamps)
        self._stamps = sorted(stamps) if usable else None

    def _open(self):
        av = _av()
        self.close()
        try:
            self._container = av.open(self.path, mode='r')
        except av.FFmpegError as e:
            raise VideoError(f"video '{self.path}' could not be opened ({_reason(e)})") from None
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = 'AUTO'
        self._frames = self._container.decode(self._stream)
        self._next = 0

    def frame(self, index):
        """Frame ``index`` (0 .. frame_count - 1) as uint8 (H, W, 3) RGB."""
        if not 0 <= index < self.frame_count:
            raise IndexError(f'frame {index} is out of range: the video has {self.frame_count} frames')
        av = _av()
        try:
            if self._stamps is None:
                return self._decode_in_order(index)
            return self._decode_stamp(index)
        except av.FFmpegError as e:
            self.close()
            raise VideoError(f"frame {index} of video '{self.path}' could not be decoded ({_reason(e)})") from None

    def _decode_in_order(self, index):
        if self._container is None or self._next is None or index < self._next:
            self._open()
        for frame in self._frames:
            self._next += 1
            if self._next - 1 == index:
                return frame.to_ndarray(format='rgb24')
        self.close()
        raise VideoError(f"video '{self.path}' ended before frame {index}")

    def _decode_stamp(self, index):
        target = self._stamps[index]
        if self._container is None:
            self._open()
        if self._next is None or not 0 <= index - self._next <= self.FORWARD_LIMIT:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            self._frames = self._container.decode(self._stream)
            self._next = None
        for frame in self._frames:
            if frame.pts is None or frame.pts > target:
                break
            if frame.pts == target:
                self._next = index + 1
                return frame.to_ndarray(format='rgb24')
        self.close()
        raise VideoError(f"frame {index} of video '{self.path}' could not be decoded (the stream skips it)")

    def close(self):
        if self._container is not None:
            self._container.close()
        release_libav(self, '_container', '_stream', '_frames')
        self._next = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _reason(error):
    text = str(getattr(error, 'strerror', '') or error).strip()
    return text or type(error).__name__


def check_writable_folder(folder):
    """Create ``folder`` if needed and make sure files can be written into it.

    Raises:
        UserError: the folder cannot be created or written to.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.write_check.', dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to the output folder '{folder}' ({e.strerror or e}); "
                        f"choose another --out") from None
    return folder


class VideoWriter:
    """Encode frames into an H.264 mp4, atomically.

    Frames go to a hidden temporary file beside ``path``; ``close()`` flushes
    the encoder and renames it to ``path``; ``abort()`` (or leaving a ``with``
    block through an exception) removes it. The frame size is fixed by the
    first frame; odd widths or heights are padded by one repeated edge pixel
    (yuv420p needs even sizes).

    Args:
        path: destination, normally ending in .mp4 (its folder is created).
        fps: frames per second (positive number).
        crf: x264 constant rate factor (0 lossless .. 51; 17 looks lossless).
    """

    def __init__(self, path, fps, crf=17):
        _av()
        if not fps or fps <= 0:
            raise VideoError(f'frames per second must be positive, got {fps}')
        self.path, self.fps, self.crf = path, fps, crf
        folder = os.path.dirname(os.path.abspath(path))
        check_writable_folder(folder)
        # A killed run's leftover (its process gone) is removed here.
        self._tmp = make_staging_file(path)
        self._container = self._stream = None
        self.size = None  # (height, width) of the frames given
        self.frames_written = 0

    def _open(self, height, width):
        av = _av()
        self._container = av.open(self._tmp, mode='w', format='mp4', options={'movflags': 'faststart'})
        stream = self._container.add_stream('libx264', rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = 'yuv420p'
        stream.options = {'crf': str(self.crf), 'preset': 'medium'}
        self._stream = stream

    def write(self, frames):
        """Encode one uint8 (H, W, 3) frame or a batch (N, H, W, 3) (array or list)."""
        if self._tmp is None:
            raise ValueError('the video writer is closed')
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = frames[None]
        av = _av()
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f'frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}')
            if self.size is None:
                self.size = frame.shape[:2]
                self._open(*self.size)
            elif frame.shape[:2] != self.size:
                raise ValueError(f'every frame must be {self.size}, got {frame.shape[:2]}')
            if frame.shape[0] % 2 or frame.shape[1] % 2:
                frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode='edge')
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self):
        """Finish the video and move it to ``path``. Returns ``path``."""
        if self._tmp is None:
            return self.path
        try:
            if self._container is None:
                raise ValueError(f"no frames were written to '{self.path}'")
            for packet in self._stream.encode():  # flush delayed frames
                self._container.mux(packet)
            self._container.close()
            release_libav(self, '_container', '_stream')
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self):
        """Discard the video: nothing is left under ``path`` or the temporary name."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; a failed close changes nothing
                pass
            release_libav(self, '_container', '_stream')
        if self._tmp is not None:
            try:
                os.remove(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def read_video_info(path):
    """(frame count actually decoded, height, width, fps) of a video; decodes it all (for checks)."""
    with VideoReader(path) as reader:
        count = sum(1 for _ in reader)
        return count, reader.height, reader.width, reader.fps
