"""Video in and out, and the video applications end to end on tiny clips made here.

The transformer is the hand-set one of test_applications: a pure shift of 4
pixels at 32 x 32 (template pixel x sits at image pixel x + 4), so where the
label must land in every frame is known exactly.
"""
import argparse
import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import make_square, native_square, square_window, unsquare
from datasets.video import IndexedVideoFrames, VideoFrames
from tests.test_applications import SHIFT_PIXELS, SIZE, make_stn, run_module, single_error_line
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from utils.video_io import (SeekableVideo, VideoError, VideoReader, VideoWriter, check_writable_folder,
                            read_video_info)

FRAMES = 6


def clip_frames(count=FRAMES, height=SIZE, width=SIZE + 8):
    """uint8 (count, H, W, 3): a blue ramp, green by frame, a bright square moving right."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(0, 200, width).astype(np.uint8)[None, None, :]
    for i in range(count):
        frames[i, ..., 1] = 20 * i
        frames[i, 10:16, 6 + 2 * i:12 + 2 * i, :] = 230
    return frames


def write_clip(path, frames, fps=30):
    with VideoWriter(str(path), fps) as writer:
        writer.write(frames)
    return str(path)


def mp4_files(folder):
    return sorted(glob.glob(os.path.join(str(folder), '**', '*.mp4'), recursive=True))


@pytest.fixture(scope='module')
def clip_world(tmp_path_factory):
    root = tmp_path_factory.mktemp('video')
    clip = write_clip(root / 'clip.mp4', clip_frames())
    state = make_stn().state_dict()
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=16, real_size=SIZE, gen_size=SIZE,
                              stn_channel_multiplier=0.5, num_heads=1, padding_mode='border')
    ckpt = save_checkpoint({'t_ema': state, 'args': args}, str(root / 'stn.pt'))
    label = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    label[12:16, 10:14] = (255, 0, 0, 255)  # a red square at template x 10..13, y 12..15
    label_path = str(root / 'label.png')
    Image.fromarray(label, 'RGBA').save(label_path)
    return dict(root=root, clip=clip, ckpt=ckpt, label=label_path)


pytestmark = pytest.mark.usefixtures('one_thread')


# ----------------------------------------------------------------------------- video I/O


def write_frameless_mp4(path):
    """An mp4 file with a video stream's header and not a single frame."""
    import av
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = 'yuv420p'
        container.start_encoding()

def test_writer_and_reader_round_trip(tmp_path):
    frames = clip_frames(count=5, height=21, width=30)  # odd height: padded by one edge row
    path = write_clip(tmp_path / 'out.mp4', frames, fps=25)
    assert os.listdir(tmp_path) == ['out.mp4']  # no temporary file left
    count, height, width, fps = read_video_info(path)
    assert (count, height, width, fps) == (5, 22, 30, 25.0)
    with VideoReader(path) as reader:
        decoded = np.stack(list(reader))
    # H.264 at crf 17 is close to the input (chroma subsampling blurs colour edges a little).
    assert np.abs(decoded[:, :21].astype(int) - frames).mean() < 4
    assert (decoded[:, 21] == decoded[:, 20]).all() or np.abs(decoded[:, 21].astype(int) - decoded[:, 20]).max() < 8


def test_writer_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(str(tmp_path / 'broken.mp4'), 30) as writer:
            writer.write(clip_frames(count=2))
            raise RuntimeError('interrupted')
    assert os.listdir(tmp_path) == []
    writer = VideoWriter(str(tmp_path / 'mixed.mp4'), 30)
    writer.write(clip_frames(count=1))
    with pytest.raises(ValueError):
        writer.write(clip_frames(count=1, width=16))  # a frame of another size
    writer.abort()
    assert os.listdir(tmp_path) == []


_HELD = []  # what a forked child frees (held only here, so that dropping it frees it)


def _hold_closed_readers_and_writers(path):
    with VideoWriter(path, 24) as writer:
        writer.write(clip_frames(count=4, height=64, width=64))
    with VideoReader(path) as reader:
        next(iter(reader))
    seekable = SeekableVideo(path)
    seekable.frame(2)
    seekable.close()
    _HELD[:] = [writer, reader, seekable]


def _free_held():
    _HELD.clear()


def test_closed_readers_and_writers_hold_no_libav_threads_into_a_fork(tmp_path):
    # A DataLoader forks its workers while the process still holds closed readers
    # and writers. libav objects kept alive have codec and converter threads the
    # child lacks: a child freeing them waited for those threads forever.
    import multiprocessing
    _hold_closed_readers_and_writers(str(tmp_path / 'clip.mp4'))
    child = multiprocessing.get_context('fork').Process(target=_free_held)
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    _HELD.clear()
    assert not hung and child.exitcode == 0


def test_reader_refuses_bad_files(tmp_path):
    (tmp_path / 'text.mp4').write_text('not a video at all')
    with pytest.raises(VideoError, match='could not be opened'):
        VideoReader(str(tmp_path / 'text.mp4'))
    with pytest.raises(VideoError, match='does not exist'):
        VideoReader(str(tmp_path / 'missing.mp4'))
    empty = str(tmp_path / 'empty.mp4')
    write_frameless_mp4(empty)
    assert os.path.getsize(empty) > 0
    with pytest.raises(VideoError, match='no frames|no video stream'):
        VideoReader(empty)


def test_video_frames_are_made_square_and_batched(tmp_path):
    frames = clip_frames(count=5, height=24, width=40)
    path = write_clip(tmp_path / 'wide.mp4', frames)
    video = VideoFrames(path, 16, pad='center')
    assert (video.width, video.height) == (40, 24)
    batches = list(video.batches(2))
    assert [start for start, _ in batches] == [0, 2, 4]
    assert [tuple(b.shape) for _, b in batches] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    tensor = torch.cat([b for _, b in batches])
    assert tensor.min() >= -1 and tensor.max() <= 1
    # The centre crop keeps columns 8..31 of the ramp: blue rises from left to right, not from 0.
    blue = tensor[0, 2, :5].mean(dim=0)  # rows above the moving square
    assert blue[0] > -0.8 and (blue[1:] >= blue[:-1] - 0.05).all()
    padded = torch.cat([b for _, b in VideoFrames(path, 16, pad='zero').batches(5)])
    assert (padded[:, :, :2] == -1).all()  # black bars above and below a wide frame
    assert [s for s, _ in video.batches(2, skip=lambda n: n != 1)] == [2]
    with pytest.raises(UserError):
        VideoFrames(path, 16, pad='none')


def write_keyframed_clip(path, frames, gop):
    """An mp4 with a key frame every ``gop`` frames (so reading by number really seeks)."""
    import av
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libx264', rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = 'yuv420p'
        stream.codec_context.gop_size = gop
        stream.options = {'crf': '17', 'keyint': str(gop), 'min-keyint': str(gop), 'scenecut': '0'}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def test_frames_by_number_equal_the_stream(tmp_path):
    frames = np.concatenate([clip_frames(count=12, height=24, width=40), clip_frames(count=11, height=24, width=40)])
    for i in range(23):
        frames[i, :3, :3] = 10 * i  # each frame its own corner
    path = write_keyframed_clip(tmp_path / 'keyed.mp4', frames, gop=4)
    with VideoReader(path) as reader:
        streamed = np.stack(list(reader))
    with SeekableVideo(path) as video:
        assert (video.frame_count, video.width, video.height, video.fps) == (23, 40, 24, 25.0)
        order = [0, 1, 2, 22, 5, 4, 4, 13, 14, 20, 3, 21, 0]  # forward, backward, across key frames, repeats
        for index in order:
            assert (video.frame(index) == streamed[index]).all(), index
        with pytest.raises(IndexError):
            video.frame(23)
    squares = torch.cat([b for _, b in VideoFrames(path, 16, pad='zero').batches(5)])
    indexed = IndexedVideoFrames(path, 16, pad='zero')
    assert len(indexed) == 23
    for index in (17, 2, 3, 22):
        assert torch.equal(indexed[index], squares[index]), index
    assert (indexed.native_frame(9) == streamed[9]).all()


def test_frames_by_number_without_timestamps(tmp_path):
    import av
    frames = clip_frames(count=8)
    path = str(tmp_path / 'raw.h264')
    with av.open(path, 'w', format='h264') as container:  # a raw stream: its packets carry no timestamps
        stream = container.add_stream('libx264', rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with VideoReader(path) as reader:
        streamed = np.stack(list(reader))
    with SeekableVideo(path) as video:
        assert video.frame_count == 8
        for index in (3, 1, 7, 0, 5):  # decoded in order from the start, restarted to go back
            assert (video.frame(index) == streamed[index]).all(), index


@pytest.mark.parametrize('height, width', [(24, 40), (40, 24), (21, 30), (16, 16)])
@pytest.mark.parametrize('mode', ['center', 'border', 'zero'])
def test_native_squares_are_the_squares_of_the_pad_modes(height, width, mode):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    side, x, y = square_window(width, height, mode)
    square = native_square(image, mode)
    assert square.shape == (side, side, 3) and side == (min if mode == 'center' else max)(height, width)
    assert (make_square(image, side, mode) == square).all()  # make_square at the image's own scale
    assert (unsquare(square, image, mode) == image).all()
    edited = square.copy()
    edited[:] = 7
    restored = unsquare(edited, image, mode)
    assert restored.shape == image.shape
    if mode == 'center':  # only the centre square changes
        assert (restored[y:y + side, x:x + side] == 7).all()
        assert (np.delete(restored, np.s_[x:x + side], axis=1) == np.delete(image, np.s_[x:x + side], axis=1)).all()
    else:
        assert (restored == 7).all()


def test_check_writable_folder(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(UserError, match='cannot write'):
        check_writable_folder(str(blocker / 'sub'))
    assert check_writable_folder(str(tmp_path / 'new' / 'deep')) == str(tmp_path / 'new' / 'deep')


# ----------------------------------------------------------------------------- mixed_reality

def test_mixed_reality_end_to_end(clip_world):
    out = clip_world['root'] / 'mr'
    result = run_module('applications.mixed_reality', '--ckpt', clip_world['ckpt'], '--real_data_path',
                        clip_world['clip'], '--real_size', SIZE, '--label_path', clip_world['label'], '--objects',
                        '--resolution', SIZE, '--sigma', 0.5, '--opacity', 1.0, '--batch', 4, '--fps', 24,
                        '--overlay_congealed', '--save_frames', '--save_correspondences', '--no_flip_inference',
                        '--device', 'cpu', '--out', out)
    assert result.returncode == 0, result.stderr
    folder = out / 'video_clip'
    assert mp4_files(out) == [str(folder / 'congealed.mp4'), str(folder / 'propagated.mp4')]
    assert read_video_info(str(folder / 'propagated.mp4')) == (FRAMES, SIZE, SIZE, 24.0)
    assert read_video_info(str(folder / 'congealed.mp4'))[:3] == (FRAMES, SIZE, SIZE)
    assert sorted(os.listdir(folder / 'frames')) == [f'{i:06d}.png' for i in range(FRAMES)]
    points = torch.load(str(folder / 'dense_correspondences.pt'), weights_only=True)
    assert torch.is_tensor(points) and points.dtype == torch.float32  # the original's format
    record = torch.load(str(folder / 'dense_correspondences_extras.pt'), weights_only=True)
    assert points.shape == (FRAMES, 16, 2) and record['template_points'].shape == (16, 2)
    # Every label pixel lands 4 pixels to the right of its template position, in every frame.
    expected = record['template_points'] + torch.tensor([SHIFT_PIXELS, 0.0])
    torch.testing.assert_close(points, expected.expand_as(points), atol=0.05, rtol=0)
    assert (record['cluster'] == -1).all() and record['mirrored'].shape == (FRAMES, 1)
    # The label is red in the exact PNG frames, at template x + 4, and nowhere else.
    frame = np.asarray(Image.open(folder / 'frames' / '000003.png')).astype(int)
    assert (frame[12:16, 14:18, 0] == 255).all() and (frame[12:16, 14:18, 1:] == 0).all()
    source = torch.cat([b for _, b in VideoFrames(clip_world['clip'], SIZE).batches(FRAMES)])[3]
    source = ((source + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(int)
    outside = np.ones((SIZE, SIZE), dtype=bool)
    outside[11:17, 13:19] = False  # the square plus the splat's one-pixel reach
    assert (frame[outside] == source[outside]).all()
    # The congealed frames show the label at its template position (drawn over them).
    congealed = np.asarray(Image.open(folder / 'congealing_frames' / '000000.png')).astype(int)
    assert (congealed[12:16, 10:14, 0] == 255).all()
    with VideoReader(str(folder / 'propagated.mp4')) as reader:
        decoded = np.stack(list(reader)).astype(int)
    red = decoded[:, 12:16, 14:18]
    assert (red[..., 0] > 200).all() and (red[..., 1] < 60).all()
    assert 'frames/s' in result.stdout


def test_mixed_reality_reads_a_folder_of_frames_and_blends(clip_world, tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i, frame in enumerate(clip_frames(count=3)):
        Image.fromarray(frame).save(folder / f'{i:03d}.png')
    out = tmp_path / 'out'
    result = run_module('applications.mixed_reality', '--ckpt', clip_world['ckpt'], '--real_data_path', folder,
                        '--real_size', SIZE, '--label_path', clip_world['label'], '--resolution', SIZE,
                        '--blend_alg', 'laplacian_light', '--pad', 'border', '--batch', 2, '--device', 'cpu',
                        '--out', out)
    assert result.returncode == 0, result.stderr
    assert read_video_info(str(out / 'video_frames' / 'propagated.mp4'))[:3] == (3, SIZE, SIZE)


@pytest.mark.parametrize('case', ['not_a_video', 'empty_label', 'missing_label', 'cluster', 'unwritable'])
def test_mixed_reality_bad_input(clip_world, tmp_path, case):
    args = {'--ckpt': clip_world['ckpt'], '--real_data_path': clip_world['clip'], '--label_path': clip_world['label'],
            '--out': tmp_path / 'out'}
    extra = []
    if case == 'not_a_video':
        (tmp_path / 'notes.mov').write_text('hello')
        args['--real_data_path'] = tmp_path / 'notes.mov'
    elif case == 'empty_label':
        Image.fromarray(np.zeros((SIZE, SIZE, 4), dtype=np.uint8), 'RGBA').save(tmp_path / 'empty.png')
        args['--label_path'] = tmp_path / 'empty.png'
    elif case == 'missing_label':
        args['--label_path'] = tmp_path / 'nope.png'
    elif case == 'cluster':
        extra = ['--cluster', 3]
    elif case == 'unwritable':
        (tmp_path / 'blocker').write_text('a file where a folder should be')
        args['--out'] = tmp_path / 'blocker' / 'out'
    flat = [str(x) for pair in args.items() for x in pair]
    result = run_module('applications.mixed_reality', *flat, *extra, '--real_size', SIZE, '--resolution', SIZE,
                        '--device', 'cpu')
    line = single_error_line(result)
    assert {'not_a_video': 'notes.mov', 'empty_label': 'empty', 'missing_label': 'nope.png',
            'cluster': 'single cluster', 'unwritable': 'cannot write'}[case] in line
    assert mp4_files(tmp_path) == []


# ----------------------------------------------------------------------------- prepare_data

def test_prepare_data_synthetic_video_and_video_input(tmp_path):
    import prepare_data
    from datasets.lmdb_dataset import MultiResolutionDataset
    path = str(tmp_path / 'face.mp4')
    assert prepare_data.main(['--synthetic_video', path, '--frames', '8', '--size', '32', '--seed', '3']) == 0
    assert sorted(os.listdir(tmp_path)) == ['face.keypoints.pt', 'face.mp4']
    assert read_video_info(path)[:3] == (8, 32, 32)
    keypoints = torch.load(str(tmp_path / 'face.keypoints.pt'), weights_only=True)
    assert keypoints.shape == (8, 10, 3) and keypoints.dtype == torch.float32
    assert (keypoints[..., 2] == 1).all()
    assert ((keypoints[..., :2] >= 0) & (keypoints[..., :2] <= 31)).all()
    steps = (keypoints[1:, :, :2] - keypoints[:-1, :, :2]).norm(dim=-1)
    assert steps.max() < 2.0 and steps.mean() > 0.05  # moving, smoothly (under 2 pixels a frame)
    # The same seed renders the same video; another seed another face.
    again = str(tmp_path / 'again' / 'face.mp4')
    prepare_data.main(['--synthetic_video', again, '--frames', '8', '--size', '32', '--seed', '3'])
    torch.testing.assert_close(torch.load(again.replace('.mp4', '.keypoints.pt'), weights_only=True), keypoints)
    # A video as --path: every frame stored in order, at each size.
    out = str(tmp_path / 'lmdb')
    assert prepare_data.main(['--path', path, '--out', out, '--size', '16,32', '--n_worker', '0']) == 0
    with VideoReader(path) as reader:
        decoded = np.stack(list(reader)).astype(int)
    dataset = MultiResolutionDataset(out, 32)
    assert len(dataset) == 8
    stored = ((dataset[5] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(int)
    assert np.abs(stored - decoded[5]).max() <= 1
    assert len(MultiResolutionDataset(out, 16)) == 8


def test_prepare_data_refuses_a_file_that_is_not_a_video(tmp_path, capsys):
    import prepare_data
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(SystemExit) as info:
        prepare_data.main(['--path', str(tmp_path / 'notes.txt'), '--out', str(tmp_path / 'out')])
    assert info.value.code == 1
    assert 'notes.txt' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------- vis_correspondence

def tile(frame, index, nrow=2, padding=3):
    """Tile ``index`` of a decoded grid frame (SIZE x SIZE)."""
    row, col = divmod(index, nrow)
    top, left = padding + row * (SIZE + padding), padding + col * (SIZE + padding)
    return frame[top:top + SIZE, left:left + SIZE]


def test_vis_correspondence_end_to_end(tmp_path):
    from datasets.lmdb_dataset import write_lmdb_dataset
    from tests.test_applications import make_images
    data = str(tmp_path / 'data')
    write_lmdb_dataset(data, {SIZE: make_images()})
    state = make_stn().state_dict()
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=16, num_heads=1)
    ckpt = save_checkpoint({'t_ema': state, 'args': args}, str(tmp_path / 'stn.pt'))
    label = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    label[12:16, 10:14] = (255, 0, 0, 255)
    Image.fromarray(label, 'RGBA').save(tmp_path / 'label.png')
    out = tmp_path / 'vis'
    result = run_module('applications.vis_correspondence', '--ckpt', ckpt, '--real_data_path', data, '--real_size',
                        SIZE, '--label_path', tmp_path / 'label.png', '--objects', '--resolution', SIZE,
                        '--sigma', 0.5, '--opacity', 1.0, '--length', 4, '--flip_length', 3, '--stage_flip',
                        '--vis_in_stages', '--n_mean', 4, '--no_flip_inference', '--splat_batch', 8,
                        '--batch', 2, '--num_workers', 0, '--device', 'cpu', '--out', out, '--fps', 10)
    assert result.returncode == 0, result.stderr
    # Stages: mirroring (3 frames), similarity (4), flow (4).
    grid = 3 + 2 * (SIZE + 3) + 1  # two tiles a row, padded to an even size for H.264
    assert read_video_info(str(out / 'smoothly_congeal.mp4'))[:3] == (11, grid, grid)
    assert read_video_info(str(out / 'smoothly_propagate.mp4'))[:3] == (11, grid, grid)
    # congealing, a 2-frame pause, a 2-frame fade, the propagation, a 1-frame end.
    assert read_video_info(str(out / 'smooth_correspondence.mp4'))[:3] == (27, grid, grid)
    assert read_video_info(str(out / 'smoothly_average.mp4'))[:3] == (16, SIZE, SIZE)
    assert {'initial_average.png', 'stage0_average.png', 'stage1_average.png', 'stage2_average.png',
            'labeled_average.png'} <= set(os.listdir(out))
    with VideoReader(str(out / 'smoothly_propagate.mp4')) as reader:
        frames = [frame.astype(int) for frame in reader]
    # First frame: the label on the congealed image at its template position; last frame: the
    # label on the image itself, 4 pixels to the right (where the template's pixels come from).
    # (Rows 13-14 are one chroma row of H.264's 4:2:0 sampling; the square's edge rows share theirs.)
    for frame, columns, away in ((frames[0], slice(10, 14), slice(18, 24)), (frames[-1], slice(14, 18), slice(4, 10))):
        square = tile(frame, 1)[13:15, columns]
        assert (square[..., 0] > 230).all() and (square[..., 1] < 30).all(), square[..., :2]
        assert tile(frame, 1)[13:15, away, 0].max() < 120  # no red where the label is not
    labelled = np.asarray(Image.open(out / 'labeled_average.png')).astype(int)
    assert (labelled[12:16, 10:14, 0] == 255).all()


# ----------------------------------------------------------------------------- training visuals

def test_animate_training_visuals(tmp_path, capsys):
    from applications.animate_training_visuals import main as animate_main
    run = tmp_path / 'results' / 'demo'
    run.mkdir(parents=True)
    for step in (2000, 0, 1000):  # out of order on purpose
        Image.fromarray(np.full((10, 14, 3), step // 10, dtype=np.uint8)).save(run / f'congealed_real_{step:07d}.png')
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(run / f'flow_real_{0:07d}.png')
    (run / 'opt.txt').write_text('not a frame')
    out = tmp_path / 'visuals'
    assert animate_main(['--exps', 'demo', '--results', str(tmp_path / 'results'), '--out', str(out),
                         '--visuals', 'congealed_real', '--fps', '5']) == 0
    assert os.listdir(out / 'demo') == ['congealed_real.mp4']
    with VideoReader(str(out / 'demo' / 'congealed_real.mp4')) as reader:
        frames = np.stack(list(reader)).astype(int)
    assert frames.shape == (3, 10, 14, 3)
    assert np.abs(frames[:, 4, 6, 0] - [0, 100, 200]).max() <= 3  # iteration order
    with pytest.raises(SystemExit):
        animate_main(['--exps', 'demo', '--results', str(tmp_path / 'results'), '--out', str(out),
                      '--visuals', 'nothing'])
    assert "no 'nothing_<iteration>.png'" in capsys.readouterr().err
