"""The edit studio's server: template, label round trip, propagation of a known label,
export, refusals of bad requests, and the command line.

The world is tests/studio_world.py's: a transformer that shifts by exactly 4
pixels, so the propagated label's place is known to the pixel.
"""
import io
import os
import queue
import re
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

pytest.importorskip('starlette', reason='the studio extra is not installed (pip install -e .[studio])')
pytest.importorskip('httpx', reason='the test client needs httpx (pip install -e .[dev])')
from starlette.testclient import TestClient  # noqa: E402

from applications.edit_studio import main as studio_main  # noqa: E402
from applications.studio.launch import build_engine  # noqa: E402
from applications.propagate_to_images import main as propagate_main  # noqa: E402
from applications.studio import require_studio_dependencies  # noqa: E402
from applications.studio.engine import MAX_UPLOAD_BYTES  # noqa: E402
from applications.studio.server import build_app  # noqa: E402
from tests.studio_world import (NUM_IMAGES, SHIFT_PIXELS, SIZE, decode_data_url, decode_png, make_world,  # noqa: E402
                                png_bytes, studio_argv)
from utils.errors import UserError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp('studio'))


@pytest.fixture(autouse=True)
def single_thread(one_thread):
    yield


def studio(world, out, *extra):
    """(engine, test client) for the tiny world, exports into ``out``."""
    _, engine = build_engine(studio_argv(world, out, *extra), verbose=False)
    return engine, TestClient(build_app(engine))


def wait_for_template(client, cluster=0, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f'/api/template?cluster={cluster}')
        if response.status_code == 200:
            assert response.headers['content-type'] == 'image/png'
            return decode_png(response.content)
        assert response.status_code == 202, response.text
        progress = response.json()
        assert progress['state'] == 'computing' and 0 <= progress['done'] <= progress['total']
        assert time.monotonic() < deadline, 'the template took too long'
        time.sleep(0.05)


def square_label(value=(255, 0, 0, 255)):
    """A label with a square at template x 10..13, y 12..15."""
    label = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    label[12:16, 10:14] = value
    return label


def shifted_average(images, count):
    """The stretched average of the first ``count`` images congealed by the 4-pixel shift."""
    columns = np.minimum(np.arange(SIZE) + SHIFT_PIXELS, SIZE - 1)
    mean = images[:count][:, :, columns].astype(np.float64).mean(axis=0)
    return (mean - mean.min()) / (mean.max() - mean.min()) * 255


def test_template_is_the_cached_average_of_congealed_images(world, tmp_path):
    engine, client = studio(world, tmp_path / 'out', '--n_mean', 6)
    info = client.get('/api/info').json()
    assert (info['num_images'], info['template_size'], info['clusters']) == (NUM_IMAGES, SIZE, 1)
    template = wait_for_template(client)
    assert template.shape == (SIZE, SIZE, 3)
    difference = np.abs(template - shifted_average(world['images'], 6))
    assert difference.max() <= 6 and difference.mean() < 0.5
    status = client.get('/api/status').json()
    # The template's six alignments are kept (the default --keep_warps covers them).
    assert status == {'cluster': 0, 'state': 'ready', 'done': 6, 'total': 6, 'error': None, 'kept': 6, 'keep': 6}

    # Cached beside the LMDB data; a new studio reads the file instead of recomputing.
    path = engine.average_cache_path(0)
    assert os.path.dirname(os.path.dirname(path)) == world['data']
    with open(path, 'rb') as f:
        assert (decode_png(f.read()) == template).all()
    marker = np.full((SIZE, SIZE, 3), 77, dtype=np.uint8)
    with open(path, 'wb') as f:
        f.write(png_bytes(marker))
    _, again = studio(world, tmp_path / 'out2', '--n_mean', 6)
    assert (wait_for_template(again) == marker).all()
    # Another number of images is another template.
    other, _ = studio(world, tmp_path / 'out3', '--n_mean', 5)
    assert other.average_cache_path(0) != path
    os.remove(path)


def test_label_upload_and_download_round_trip(world, tmp_path):
    engine, client = studio(world, tmp_path)
    assert client.get('/api/label').status_code == 404
    rng = np.random.default_rng(0)
    label = rng.integers(0, 256, size=(24, 24, 4), dtype=np.uint8)  # labels are square (the template is)
    answer = client.post('/api/label', content=png_bytes(label))
    assert answer.status_code == 200
    assert answer.json() == {'width': 24, 'height': 24, 'pixels': int((label[..., 3] > 0).sum())}
    back = client.get('/api/label?download=1')
    assert back.headers['content-type'] == 'image/png'
    assert 'label.png' in back.headers['content-disposition']
    assert (decode_png(back.content) == label).all()

    # A mask without alpha becomes RGBA with the mask as alpha (what --label_path reads the same way).
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[3:7, 2:9] = 255
    client.post('/api/label', content=png_bytes(mask))
    rgba = decode_png(client.get('/api/label').content)
    assert rgba.shape == (16, 16, 4)
    assert ((rgba[..., 3] == 255) == (mask == 255)).all() and (rgba[..., 3][mask == 0] == 0).all()


def post_json(client, url, body):
    return client.post(url, json=body)


def test_preview_propagates_a_known_label_as_the_command_line_does(world, tmp_path):
    engine, client = studio(world, tmp_path / 'out', '--resolution', SIZE)
    client.post('/api/label', content=png_bytes(square_label()))
    request = {'selection': {'mode': 'indices', 'indices': '1, 3 6'}, 'sigma': 0.5, 'opacity': 1.0,
               'objects': True}
    result = post_json(client, '/api/preview', request).json()
    assert result['indices'] == [1, 3, 6] and [item['index'] for item in result['items']] == [1, 3, 6]
    images = world['images'].astype(np.int64)
    outside = np.ones((SIZE, SIZE), dtype=bool)
    outside[11:17, 13:19] = False  # the square moved 4 pixels right, plus the splat's one-pixel reach
    previews = {}
    for item in result['items']:
        original = decode_data_url(item['original']).astype(np.int64)
        propagated = decode_data_url(item['propagated']).astype(np.int64)
        congealed = decode_data_url(item['congealed']).astype(np.int64)
        assert (original == images[item['index']]).all()
        columns = np.minimum(np.arange(SIZE) + SHIFT_PIXELS, SIZE - 1)
        assert np.abs(congealed - images[item['index']][:, columns]).mean() < 0.1
        assert (propagated[12:16, 14:18] == (255, 0, 0)).all()
        assert (propagated[outside] == original[outside]).all()
        previews[item['index']] = propagated
    annotated = decode_data_url(result['annotated_template'])
    assert (annotated[12:16, 10:14, 0] == 255).all()

    # The command line with the same label and settings writes the same pixels.
    label_path = tmp_path / 'label.png'
    label_path.write_bytes(client.get('/api/label').content)
    cli_out = tmp_path / 'cli'
    propagate_main(['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--real_size', str(SIZE),
                    '--label_path', str(label_path), '--objects', '--resolution', str(SIZE), '-s', '0.5', '-o', '1.0',
                    '--dset_indices',
                    '1', '3', '6', '--save_individual_images', '--num_workers', '0', '--device', 'cpu',
                    '--out', str(cli_out)])
    for position, index in enumerate([1, 3, 6]):
        written = decode_png((cli_out / 'propagated' / f'{position:03}.png').read_bytes()).astype(np.int64)
        assert (written == previews[index]).all()

    # Mask mode: the label's pixels carry the colour scale instead of their colours.
    result = post_json(client, '/api/preview', dict(request, objects=False)).json()
    propagated = decode_data_url(result['items'][0]['propagated']).astype(np.int64)
    assert (propagated[12:16, 14:18, 0] > 0).all()  # the images have no red; the colour scale does
    assert not (propagated[12:16, 14:18] == (255, 0, 0)).all(axis=-1).any()
    assert (propagated[outside] == images[1][outside]).all()


def test_selections(world, tmp_path):
    engine, client = studio(world, tmp_path)
    assert engine.resolve_selection({'mode': 'first', 'count': 3}) == [0, 1, 2]
    assert engine.resolve_selection({'mode': 'first', 'count': 100}) == list(range(NUM_IMAGES))
    chosen = engine.resolve_selection({'mode': 'random', 'count': 4, 'seed': 5})
    assert chosen == engine.resolve_selection({'mode': 'random', 'count': 4, 'seed': 5})
    assert len(set(chosen)) == 4 and chosen == sorted(chosen) and all(0 <= i < NUM_IMAGES for i in chosen)
    assert engine.resolve_selection({'mode': 'indices', 'indices': [7, 0]}) == [7, 0]


def test_export_writes_a_zip_of_full_resolution_propagated_images(world, tmp_path):
    out = tmp_path / 'out'
    engine, client = studio(world, out, '--resolution', SIZE)
    client.post('/api/label', content=png_bytes(square_label()))
    request = {'selection': {'mode': 'indices', 'indices': [0, 2]}, 'sigma': 0.5, 'opacity': 1.0, 'objects': True}
    result = post_json(client, '/api/export', request).json()
    assert result['count'] == 2 and result['url'] == f"/api/download/{result['name']}"
    assert sorted(os.listdir(out)) == [result['name']]  # no temporary file left
    download = client.get(result['url'])
    assert download.status_code == 200 and download.headers['content-type'] == 'application/zip'
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert sorted(archive.namelist()) == ['label.png', 'propagated/00000.png', 'propagated/00002.png',
                                              'template_annotated.png']
        assert (decode_png(archive.read('label.png')) == square_label()).all()
        preview = post_json(client, '/api/preview', request).json()
        for item in preview['items']:
            exported = decode_png(archive.read(f"propagated/{item['index']:05d}.png"))
            assert exported.shape == (SIZE, SIZE, 3)
            assert (exported == decode_data_url(item['propagated'])).all()
    everything = post_json(client, '/api/export', dict(request, all=True)).json()
    assert everything['count'] == NUM_IMAGES
    with zipfile.ZipFile(out / everything['name']) as archive:
        assert len([n for n in archive.namelist() if n.startswith('propagated/')]) == NUM_IMAGES


def assert_error(response, status, *words):
    assert response.status_code == status, response.text
    message = response.json()['error']
    assert 'Traceback' not in response.text
    for word in words:
        assert word in message, message
    return message


def test_paths_outside_the_served_folders_are_refused(world, tmp_path):
    out = tmp_path / 'out'
    engine, client = studio(world, out)
    secret = open(world['ckpt'], 'rb').read()[:64]
    for url in ('/api/download/..%2F..%2Fstn.pt', '/api/download/%2e%2e%2fstn.pt',
                '/api/download/propagated-20250101-000000-000.zip', '/static/..%2Fengine.py',
                '/static/%2e%2e/engine.py', '/static/../server.py', '/api/download/stn.pt'):
        response = client.get(url)
        assert response.status_code == 404, url
        assert secret not in response.content and b'StudioEngine' not in response.content
    # A link in the output folder with an export's name, pointing elsewhere, is not followed.
    os.symlink(world['ckpt'], out / 'propagated-20250101-000000-001.zip')
    assert client.get('/api/download/propagated-20250101-000000-001.zip').status_code == 404
    assert client.get('/static/studio.js').status_code == 200


def test_bad_uploads_and_requests_get_a_message(world, tmp_path):
    engine, client = studio(world, tmp_path)
    assert_error(client.post('/api/label', content=b'\x89PNG' + b'0' * (MAX_UPLOAD_BYTES + 1)), 413, 'larger')
    assert_error(client.post('/api/label', content=b'this is not an image'), 400, 'not a readable image')
    assert_error(client.post('/api/label', content=b''), 400, 'empty')
    assert_error(client.post('/api/label', content=png_bytes(np.zeros((1, 5000), dtype=np.uint8))), 400,
                 '5000', 'at most 4096')
    truncated = png_bytes(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:300]
    assert_error(client.post('/api/label', content=truncated), 400, 'label was refused')
    assert_error(client.post('/api/object', content=b'GIF89a nonsense'), 400, 'object was refused')
    assert engine.label is None  # nothing refused was kept

    assert_error(post_json(client, '/api/preview', {}), 400, 'no label')
    client.post('/api/label', content=png_bytes(square_label()))
    assert_error(post_json(client, '/api/preview', {'selection': {'mode': 'indices', 'indices': [99]}}), 400,
                 'index 99 is out of range')
    assert_error(post_json(client, '/api/preview', {'sigma': -1}), 400, 'sigma')
    assert_error(post_json(client, '/api/preview', {'opacity': 2}), 400, 'opacity')
    assert_error(post_json(client, '/api/preview', {'cluster': 3}), 400, 'cluster 3')
    assert_error(post_json(client, '/api/preview', {'selection': {'mode': 'all'}}), 400, 'selection mode')
    assert_error(post_json(client, '/api/preview', {'selection': {'mode': 'indices', 'indices': [0] * 65}}), 400,
                 'at most 64')
    assert_error(client.post('/api/preview', content=b'{not json'), 400, 'JSON')
    client.post('/api/label', content=png_bytes(np.zeros((SIZE, SIZE, 4), dtype=np.uint8)))
    assert_error(post_json(client, '/api/preview', {}), 400, 'empty')


def test_the_page_fetches_nothing_from_elsewhere():
    folder = os.path.join(REPO, 'applications', 'studio', 'static')
    names = sorted(os.listdir(folder))
    assert names == ['index.html', 'studio.css', 'studio.js']
    for name in names:
        text = open(os.path.join(folder, name), encoding='utf-8').read()
        assert re.search(r'https?:|//[a-z0-9.-]+\.[a-z]{2,}/', text, re.IGNORECASE) is None, name
        assert '@import' not in text and 'url(' not in text, name


def test_missing_web_dependencies_say_how_to_install_them(monkeypatch):
    monkeypatch.setitem(sys.modules, 'uvicorn', None)
    with pytest.raises(UserError) as info:
        require_studio_dependencies()
    assert "pip install -e '.[studio]'" in str(info.value) and 'uvicorn' in str(info.value)


def test_command_line_serves_the_page_on_a_synthetic_dataset(world, tmp_path):
    import httpx

    data = tmp_path / 'synthetic'
    made = subprocess.run([sys.executable, 'prepare_data.py', '--synthetic', '--out', str(data), '--size', str(SIZE),
                           '--max_images', '6', '--seed', '0', '--n_worker', '0'], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert made.returncode == 0, made.stderr
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    process = subprocess.Popen([sys.executable, '-m', 'applications.edit_studio', '--ckpt', world['ckpt'],
                                '--real_data_path', str(data), '--real_size', str(SIZE), '--device', 'cpu',
                                '--port', '0', '--out', str(tmp_path / 'out')],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    # Read the output on a thread so that a studio that never prints its URL fails the test, not hangs it.
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        url, seen, deadline = None, [], time.monotonic() + 120
        while url is None:
            try:
                seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f'no URL printed within 120 s: {"".join(seen)}') from None
            found = re.search(r'Edit studio: open (http://127\.0\.0\.1:\d+/)', seen[-1])
            url = found and found.group(1)
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and '<canvas id="label">' in page.text
        assert httpx.get(url + 'api/info', timeout=30).json()['num_images'] == 6
        deadline = time.monotonic() + 120
        while httpx.get(url + 'api/template', timeout=30).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_command_line_refuses_bad_input_with_one_line(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        studio_main(['--ckpt', str(tmp_path / 'nope.pt'), '--real_data_path', world['data'], '--real_size',
                     str(SIZE), '--device', 'cpu', '--port', '0', '--out', str(tmp_path / 'o')])
    assert info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'nope.pt' in errors[0]
    for flags, words in ((['--save_individual_images'], '--save_individual_images does not apply'),
                         (['--n_mean', '-1'], 'needs a template'), (['--port', '70000'], '--port')):
        with pytest.raises(SystemExit) as info:
            studio_main(['--ckpt', world['ckpt'], '--real_data_path', world['data'], *flags])
        assert info.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_alignment_is_kept_between_previews_of_the_same_images(world, tmp_path, monkeypatch):
    import applications.studio.engine as engine_module

    # No kept warps: images are aligned on demand and their alignments cached between previews.
    engine, client = studio(world, tmp_path, '--resolution', SIZE, '--keep_warps', 0)
    aligned, passes = [], []
    real_align, real_forward = engine_module.align, engine.t.forward
    monkeypatch.setattr(engine_module, 'align',
                        lambda t, opt, images: aligned.append(images.size(0)) or real_align(t, opt, images))
    # Every network pass goes through forward (forward_with_flip and compute_warp call it).
    monkeypatch.setattr(engine.t, 'forward', lambda *a, **k: passes.append(a[0].size(0)) or real_forward(*a, **k))
    client.post('/api/label', content=png_bytes(square_label()))
    request = {'selection': {'mode': 'indices', 'indices': [0, 1, 2]}, 'objects': True}
    wait_for_template(client)
    passes.clear()
    first = post_json(client, '/api/preview', request).json()
    assert passes == [3, 3]  # new images: the image and its mirror, nothing more
    client.post('/api/label', content=png_bytes(square_label((0, 255, 0, 255))))
    second = post_json(client, '/api/preview', request).json()
    assert aligned == [3] and passes == [3, 3]  # the second preview reused the warps: no network pass...
    for a, b in zip(first['items'], second['items']):
        assert a['congealed'] == b['congealed'] and a['propagated'] != b['propagated']  # ...with the new label
        green_before = decode_data_url(a['propagated'])[12:16, 14:18, 1]
        assert (decode_data_url(b['propagated'])[12:16, 14:18, 1] > green_before).all()
    post_json(client, '/api/preview', dict(request, selection={'mode': 'indices', 'indices': [2, 3]}))
    assert aligned == [3, 1]  # only the new image is aligned


def count_passes(monkeypatch, engine):
    """A list that receives the batch size of every transformer forward pass of ``engine``."""
    passes = []
    real_forward = engine.t.forward
    # Every network pass goes through forward (forward_with_flip and compute_warp call it).
    monkeypatch.setattr(engine.t, 'forward', lambda *a, **k: passes.append(a[0].size(0)) or real_forward(*a, **k))
    return passes


def warp_bytes_per_image(engine):
    """A kept warp: the (flow_size, flow_size, 2) float32 grid plus the one-byte flip flag."""
    flow_size = engine.t.stn_in_size
    return flow_size * flow_size * 2 * 4 + 1


def test_previews_of_the_template_images_run_no_network_pass(world, tmp_path, monkeypatch):
    engine, client = studio(world, tmp_path / 'out', '--n_mean', 6, '--resolution', SIZE)
    if os.path.exists(engine.average_cache_path(0)):
        os.remove(engine.average_cache_path(0))  # the template is computed here, not read
    passes = count_passes(monkeypatch, engine)
    client.post('/api/label', content=png_bytes(square_label()))
    wait_for_template(client)
    assert passes and sum(passes) == 2 * 6  # the template: each image and its mirror, once
    assert engine.kept_warps() == 6 and engine.kept_warp_bytes() == 6 * warp_bytes_per_image(engine)
    passes.clear()
    requests = [{'selection': {'mode': 'first', 'count': 6}, 'objects': True, 'sigma': 0.5, 'opacity': 1.0},
                {'selection': {'mode': 'indices', 'indices': [5, 0, 3]}, 'objects': True, 'sigma': 0.7}]
    results = [post_json(client, '/api/preview', request).json() for request in requests]
    assert passes == []  # splat only, from the moment the template is ready

    # The same pixels as aligning on demand (no kept warps).
    _, fresh = studio(world, tmp_path / 'fresh', '--n_mean', 6, '--resolution', SIZE, '--keep_warps', 0)
    fresh.post('/api/label', content=png_bytes(square_label()))
    for request, result in zip(requests, results):
        expected = post_json(fresh, '/api/preview', request).json()
        assert [item['index'] for item in result['items']] == [item['index'] for item in expected['items']]
        for got, want in zip(result['items'], expected['items']):
            assert got['propagated'] == want['propagated'] and got['congealed'] == want['congealed']
    # The square lands 4 pixels right of where it was drawn.
    assert (decode_data_url(results[0]['items'][0]['propagated'])[12:16, 14:18] == (255, 0, 0)).all()

    # Images the template did not average are aligned on demand, and not kept.
    post_json(client, '/api/preview', {'selection': {'mode': 'indices', 'indices': [6, 7, 1]}})
    assert passes == [2, 2] and engine.kept_warps() == 6


def test_kept_warps_respect_the_cap(world, tmp_path, monkeypatch):
    engine, client = studio(world, tmp_path / 'out', '--n_mean', 6, '--keep_warps', 3, '--resolution', SIZE)
    if os.path.exists(engine.average_cache_path(0)):
        os.remove(engine.average_cache_path(0))
    passes = count_passes(monkeypatch, engine)
    client.post('/api/label', content=png_bytes(square_label()))
    wait_for_template(client)
    status = client.get('/api/status').json()
    assert (status['done'], status['kept'], status['keep']) == (6, 3, 3)
    assert engine.kept_warps() == 3 and engine.kept_warp_bytes() == 3 * warp_bytes_per_image(engine)
    passes.clear()
    post_json(client, '/api/preview', {'selection': {'mode': 'first', 'count': 3}})
    assert passes == []
    post_json(client, '/api/preview', {'selection': {'mode': 'indices', 'indices': [4, 5]}})
    assert passes == [2, 2]  # past the cap: aligned on demand
    assert engine.kept_warps() == 3 and engine.kept_warp_bytes() == 3 * warp_bytes_per_image(engine)
    with pytest.raises(SystemExit) as info:
        build_engine(studio_argv(world, tmp_path / 'bad', '--keep_warps', -1), verbose=False)
    assert info.value.code == 2


def test_a_template_from_a_file_is_followed_by_background_alignment(world, tmp_path, monkeypatch):
    import threading

    average = tmp_path / 'average.png'
    average.write_bytes(png_bytes(np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)))
    engine, client = studio(world, tmp_path / 'out', '--n_mean', 6, '--average_path', average,
                            '--resolution', SIZE)
    passes = count_passes(monkeypatch, engine)
    reached, release = threading.Event(), threading.Event()

    def hold_after_first_batch(cluster):
        if not reached.is_set():
            reached.set()
            assert release.wait(60)

    monkeypatch.setattr(engine, '_background_step', hold_after_first_batch)
    client.post('/api/label', content=png_bytes(square_label()))
    assert (wait_for_template(client) == 90).all()
    assert reached.wait(60)
    assert engine.kept_warps() == 4  # one background batch (--batch 4), then held
    passes.clear()
    # The background job is held, yet a preview of an image it has not reached runs: it aligns it itself.
    post_json(client, '/api/preview', {'selection': {'mode': 'indices', 'indices': [5, 2]}})
    assert passes == [1, 1] and engine.kept_warps() == 5
    release.set()
    deadline = time.monotonic() + 60
    while client.get('/api/status').json()['kept'] < 6:
        assert time.monotonic() < deadline, 'the background alignment took too long'
        time.sleep(0.05)
    status = client.get('/api/status').json()
    assert (status['state'], status['kept'], status['keep']) == ('ready', 6, 6)
    assert passes == [1, 1, 1, 1]  # the background aligned only image 4, the one nobody had aligned
    passes.clear()
    post_json(client, '/api/preview', {'selection': {'mode': 'first', 'count': 6}})
    assert passes == []
