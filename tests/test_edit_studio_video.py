"""The edit studio on a video file: template, previews of frame numbers, and the propagated mp4.

The video is the synthetic world's moving face (synthetic_world/moving_face.py)
and the transformer tests/studio_world.py's exact 4-pixel shift, so where the
label lands in every frame is known to the pixel.
"""
import os
import time

import numpy as np
import pytest

pytest.importorskip('starlette', reason='the studio extra is not installed (pip install -e .[studio])')
pytest.importorskip('httpx', reason='the test client needs httpx (pip install -e .[dev])')
pytest.importorskip('av', reason='video needs PyAV (pip install -e .[video])')
from starlette.testclient import TestClient  # noqa: E402

from applications.edit_studio import main as studio_main  # noqa: E402
from applications.mixed_reality import main as mixed_reality_main  # noqa: E402
from applications.studio.launch import build_engine  # noqa: E402
from applications.studio.server import build_app  # noqa: E402
from tests.studio_world import SHIFT_PIXELS, SIZE, decode_data_url, make_world, png_bytes  # noqa: E402
from tests.test_video import write_frameless_mp4  # noqa: E402
from synthetic_world.moving_face import iter_synthetic_video  # noqa: E402
from utils.video_io import VideoReader, VideoWriter  # noqa: E402

FRAMES, FPS = 9, 24
WIDE_FRAMES, WIDE_FPS, WIDE_HEIGHT, WIDE_WIDTH = 4, 15, 64, 80
RED = np.array([255, 0, 0])


def synthetic_frames(count, size, seed):
    return np.concatenate([frames for frames, _ in iter_synthetic_video(count, size, seed)])


def write_video(path, frames, fps):
    with VideoWriter(str(path), fps) as writer:
        writer.write(frames)
    return str(path)


def decode(path):
    """(frames uint8 (T, H, W, 3), fps) of a video file."""
    with VideoReader(str(path)) as reader:
        return np.stack(list(reader)), reader.fps


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp('studio_video'))
    root = world['root']
    world['video'] = write_video(root / 'face.mp4', synthetic_frames(FRAMES, SIZE, 3), FPS)
    # A wider, larger video: its centre square is twice --real_size.
    tall = synthetic_frames(WIDE_FRAMES, WIDE_WIDTH, 4)
    top = (WIDE_WIDTH - WIDE_HEIGHT) // 2
    world['wide'] = write_video(root / 'wide.mp4', tall[:, top:top + WIDE_HEIGHT], WIDE_FPS)
    world['decoded'] = decode(world['video'])[0]
    return world


@pytest.fixture(autouse=True)
def single_thread(one_thread):
    yield


@pytest.fixture
def encoded(monkeypatch):
    """{file name: uint8 (T, H, W, 3)}: the frames every VideoWriter was given (H.264 encoding is not
    bit-for-bit repeatable between runs, so equal outputs are compared before it)."""
    import utils.video_io

    frames = {}
    write = utils.video_io.VideoWriter.write

    def recording(self, batch):
        name = os.path.basename(self.path)
        frames[name] = np.concatenate([frames.get(name, np.zeros((0,) + np.shape(batch)[1:], np.uint8)), batch])
        return write(self, batch)

    monkeypatch.setattr(utils.video_io.VideoWriter, 'write', recording)
    return frames


def studio(world, out, video='video', *extra):
    argv = ['--ckpt', world['ckpt'], '--real_data_path', world[video], '--real_size', str(SIZE), '--device', 'cpu',
            '--batch', '4', '--out', str(out), '--resolution', str(SIZE), *map(str, extra)]
    _, engine = build_engine(argv, verbose=False)
    return engine, TestClient(build_app(engine))


def wait_for(client, url, ready, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url)
        if ready(response):
            return response
        assert time.monotonic() < deadline, f'{url} took too long: {response.text}'
        time.sleep(0.05)


def square_label():
    """A red square at template x 10..13, y 12..15."""
    label = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    label[12:16, 10:14] = (255, 0, 0, 255)
    return label


EDIT = (slice(12, 16), slice(10 + SHIFT_PIXELS, 14 + SHIFT_PIXELS))  # where the square lands in a frame


def outside_edit(height, width, rows, columns, reach=2):
    """A mask of the pixels farther than ``reach`` from the edit's box."""
    mask = np.ones((height, width), dtype=bool)
    mask[max(0, rows.start - reach):rows.stop + reach, max(0, columns.start - reach):columns.stop + reach] = False
    return mask


def run_video_export(client, request):
    started = client.post('/api/export_video', json=request)
    assert started.status_code == 200, started.text
    assert started.json()['state'] in ('running', 'done') and started.json()['total'] >= 1
    job = wait_for(client, '/api/export_video', lambda r: r.json()['state'] != 'running').json()
    assert job['state'] == 'done', job
    return job


def test_template_and_previews_of_frame_numbers(world, tmp_path):
    engine, client = studio(world, tmp_path / 'out', 'video', '--n_mean', 6)
    info = client.get('/api/info').json()
    assert info['num_images'] == FRAMES
    assert info['video'] == {'frames': FRAMES, 'width': SIZE, 'height': SIZE, 'fps': FPS, 'export_fps': FPS,
                             'pad': 'center'}
    assert info['command'][:3] == ['python', '-m', 'applications.mixed_reality']
    template = wait_for(client, '/api/template', lambda r: r.status_code != 202)
    assert template.status_code == 200, template.text
    from tests.studio_world import decode_png
    template = decode_png(template.content).astype(np.float64)
    # The stretched average of the first six decoded frames, each shifted by the transformer.
    columns = np.minimum(np.arange(SIZE) + SHIFT_PIXELS, SIZE - 1)
    mean = world['decoded'][:6][:, :, columns].astype(np.float64).mean(axis=0)
    expected = (mean - mean.min()) / (mean.max() - mean.min()) * 255
    assert np.abs(template - expected).mean() < 1.0
    path = engine.average_cache_path(0)
    assert os.path.isfile(path) and os.path.dirname(os.path.dirname(path)) == str(tmp_path / 'out')

    client.post('/api/label', content=png_bytes(square_label()))
    request = {'selection': {'mode': 'indices', 'indices': '8, 2 5 0'}, 'sigma': 0.5, 'opacity': 1.0,
               'objects': True}
    result = client.post('/api/preview', json=request).json()
    assert [item['index'] for item in result['items']] == [8, 2, 5, 0]
    outside = outside_edit(SIZE, SIZE, *EDIT, reach=1)
    for item in result['items']:
        original = decode_data_url(item['original'])
        assert (original == world['decoded'][item['index']]).all()  # frame numbers are the video's frames
        propagated = decode_data_url(item['propagated'])
        assert (propagated[EDIT] == RED).all()
        assert (propagated[outside] == original[outside]).all()
    # Frames past the end are refused like image indices.
    refused = client.post('/api/preview', json=dict(request, selection={'mode': 'indices', 'indices': [FRAMES]}))
    assert refused.status_code == 400 and f'index {FRAMES} is out of range' in refused.json()['error']


def test_video_export_is_the_propagated_mp4_of_every_frame(world, tmp_path, encoded):
    out = tmp_path / 'out'
    engine, client = studio(world, out, 'video', '--n_mean', 4)
    assert client.get('/api/export_video').json()['state'] == 'idle'
    client.post('/api/label', content=png_bytes(square_label()))
    request = {'sigma': 0.5, 'opacity': 1.0, 'objects': True}
    job = run_video_export(client, request)
    assert (job['done'], job['total']) == (FRAMES, FRAMES) and job['url'] == f"/api/download/{job['name']}"
    assert job['name'].endswith('.mp4')
    assert [name for name in os.listdir(out) if name != 'congealed_averages'] == [job['name']]  # no temporary file
    download = client.get(job['url'])
    assert download.status_code == 200 and download.headers['content-type'] == 'video/mp4'
    saved = tmp_path / 'download.mp4'
    saved.write_bytes(download.content)
    frames, fps = decode(saved)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and fps == FPS
    # Every frame carries the red square where the shift sends it (H.264 softens colours a little)...
    edit = frames[(slice(None),) + EDIT].astype(np.int64)
    assert (edit[..., 0] > 200).all() and (edit[..., 1:] < 70).all()
    # ...and its frames are, pixel for pixel, those the command line encodes with the label saved from the page...
    label_path = tmp_path / 'label.png'
    label_path.write_bytes(client.get('/api/label').content)
    command = client.get('/api/info').json()['command']  # what the page shows, without the label's flags
    assert command[:3] == ['python', '-m', 'applications.mixed_reality']
    mixed_reality_main(command[3:] + ['--label_path', str(label_path), '--objects', '--sigma', '0.5', '--opacity',
                                      '1.0', '--batch', '4', '--device', 'cpu', '--out', str(tmp_path / 'cli')])
    assert (encoded['propagated.mp4'] == encoded[job['name']]).all()
    assert decode(tmp_path / 'cli' / 'video_face' / 'propagated.mp4')[0].shape == frames.shape
    # ...close to the previews of the same frames; away from the edit it is the input video.
    preview = client.post('/api/preview', json=dict(request, selection={'mode': 'first', 'count': FRAMES})).json()
    previews = np.stack([decode_data_url(item['propagated']) for item in preview['items']]).astype(np.int64)
    assert np.abs(frames[(slice(None),) + EDIT] - previews[(slice(None),) + EDIT]).max() < 60
    outside = outside_edit(SIZE, SIZE, *EDIT)
    assert np.abs(frames[:, outside].astype(np.int64) - world['decoded'][:, outside]).mean() < 3

    # The zip export still works on a video's frames.
    zipped = client.post('/api/export', json=dict(request, selection={'mode': 'indices', 'indices': [1, 7]})).json()
    assert zipped['count'] == 2 and client.get(zipped['url']).headers['content-type'] == 'application/zip'


def test_a_wider_larger_video_is_exported_at_its_own_size(world, tmp_path):
    out = tmp_path / 'out'
    engine, client = studio(world, out, 'wide', '--n_mean', 2)
    source, _ = decode(world['wide'])
    info = client.get('/api/info').json()['video']
    assert (info['frames'], info['width'], info['height'], info['fps']) == (WIDE_FRAMES, WIDE_WIDTH, WIDE_HEIGHT,
                                                                             WIDE_FPS)
    client.post('/api/label', content=png_bytes(square_label()))
    job = run_video_export(client, {'sigma': 0.5, 'opacity': 1.0, 'objects': True})
    frames, fps = decode(out / job['name'])
    assert frames.shape == (WIDE_FRAMES, WIDE_HEIGHT, WIDE_WIDTH, 3) and fps == WIDE_FPS
    # The centre 64 x 64 square is twice --real_size: the square lands at twice its place, 8 columns in.
    scale, left = WIDE_HEIGHT // SIZE, (WIDE_WIDTH - WIDE_HEIGHT) // 2
    rows = slice(EDIT[0].start * scale, EDIT[0].stop * scale)
    columns = slice(left + EDIT[1].start * scale, left + EDIT[1].stop * scale)
    edit = frames[:, rows, columns].astype(np.int64)
    assert (edit[..., 0] > 200).all() and (edit[..., 1:] < 70).all()
    outside = outside_edit(WIDE_HEIGHT, WIDE_WIDTH, rows, columns, reach=3)
    assert np.abs(frames[:, outside].astype(np.int64) - source[:, outside]).mean() < 3
    # The columns outside the centre square are the input's (the crop is put back into the frame).
    assert np.abs(frames[:, :, :left].astype(np.int64) - source[:, :, :left]).max() < 40


def single_error(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error:')]
    assert len(errors) == 1 and not any('Traceback' in line for line in lines), lines
    return errors[0]


def test_bad_videos_are_refused_at_launch(world, tmp_path, capsys):
    def launch(path, *extra):
        with pytest.raises(SystemExit) as info:
            studio_main(['--ckpt', world['ckpt'], '--real_data_path', str(path), '--real_size', str(SIZE),
                         '--device', 'cpu', '--port', '0', '--out', str(tmp_path / 'out'), *extra])
        assert info.value.code != 0
        return single_error(capsys)

    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00\x00\x00\x18ftypmp42' + os.urandom(2000))
    assert 'could not be opened as a video' in launch(broken)
    empty = str(tmp_path / 'empty.mp4')
    write_frameless_mp4(empty)
    message = launch(empty)
    assert 'no frames' in message or 'no video stream' in message
    assert '--pad applies to a video file' in launch(world['data'], '--pad', 'zero')
    assert not (tmp_path / 'out').exists()


def test_a_dataset_given_a_frame_rate_is_exported_as_its_frames_in_order(world, tmp_path, encoded):
    out = tmp_path / 'out'
    _, client = studio(world, out, 'data', '--fps', 10, '--n_mean', 2)
    info = client.get('/api/info').json()
    assert info['video'] == {'frames': 8, 'width': SIZE, 'height': SIZE, 'fps': 10, 'export_fps': 10, 'pad': None}
    client.post('/api/label', content=png_bytes(square_label()))
    job = run_video_export(client, {'sigma': 0.5, 'opacity': 1.0, 'objects': True})
    frames, fps = decode(out / job['name'])
    assert frames.shape == (8, SIZE, SIZE, 3) and fps == 10
    edit = frames[(slice(None),) + EDIT].astype(np.int64)
    assert (edit[..., 0] > 200).all() and (edit[..., 1:] < 70).all()
    # The page's command (mixed_reality on the LMDB) writes the same video.
    label_path = tmp_path / 'label.png'
    label_path.write_bytes(client.get('/api/label').content)
    command = info['command']
    assert command[:3] == ['python', '-m', 'applications.mixed_reality'] and '--pad' not in command
    mixed_reality_main(command[3:] + ['--label_path', str(label_path), '--objects', '--sigma', '0.5', '--opacity',
                                      '1.0', '--batch', '4', '--device', 'cpu', '--out', str(tmp_path / 'cli')])
    assert (encoded['propagated.mp4'] == encoded[job['name']]).all()
    assert decode(tmp_path / 'cli' / 'video_data' / 'propagated.mp4')[0].shape == frames.shape
    with pytest.raises(SystemExit) as info:
        build_engine(['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--fps', '0'], verbose=False)
    assert info.value.code == 2


def test_video_export_is_refused_for_image_data(world, tmp_path):
    _, client = studio(world, tmp_path / 'out', 'data')
    assert client.get('/api/info').json()['video'] is None
    client.post('/api/label', content=png_bytes(square_label()))
    response = client.post('/api/export_video', json={})
    assert response.status_code == 400 and 'not a video' in response.json()['error']


def test_one_video_export_at_a_time_and_failures_are_reported(world, tmp_path, monkeypatch):
    import threading

    import applications.studio.engine as engine_module

    _, client = studio(world, tmp_path / 'out', 'video')
    client.post('/api/label', content=png_bytes(square_label()))
    release = threading.Event()

    def stalled_then_failing(*args, progress, **kwargs):
        progress(3)
        assert release.wait(60)
        raise RuntimeError('the disk is full')

    monkeypatch.setattr(engine_module, 'write_propagated_video', stalled_then_failing)
    assert client.post('/api/export_video', json={}).json()['state'] == 'running'
    wait_for(client, '/api/export_video', lambda r: r.json()['done'] == 3)
    second = client.post('/api/export_video', json={})
    assert second.status_code == 409 and 'already running' in second.json()['error']
    release.set()
    job = wait_for(client, '/api/export_video', lambda r: r.json()['state'] != 'running').json()
    assert job['state'] == 'failed' and job['error'] == 'the disk is full' and job['url'] is None
    assert client.get(f"/api/download/{job['name']}").status_code == 404
