"""The edit studio in a real browser: headless Chromium driven by Selenium draws a
stroke with pointer events, propagates it, and the previews change exactly
where the 4-pixel-shift transformer sends the stroke.

Needs the Debian packages chromium and chromium-driver; skipped without them
(CI installs them and sets GANGEALING_REQUIRE_BROWSER=1, which turns the skip
into a failure).
"""
import contextlib
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.browser
pytest.importorskip('starlette', reason='the studio extra is not installed (pip install -e .[studio])')
pytest.importorskip('selenium', reason='selenium is not installed (pip install -e .[dev])')

from applications.studio.launch import bind_socket, build_engine, page_url  # noqa: E402
from applications.studio.server import build_app  # noqa: E402
from tests.studio_world import SHIFT_PIXELS, SIZE, make_world, studio_argv  # noqa: E402

CHROME_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync',
                '--window-size=1400,1000')
STAGE_CSS_PIXELS = 512  # the template is shown 512 pixels wide (studio.css)


def browser_paths():
    """(chromium, chromedriver) executables, or a reason they are missing."""
    chromium = next((shutil.which(name) for name in ('chromium', 'chromium-browser') if shutil.which(name)), None)
    driver = shutil.which('chromedriver')
    if chromium and driver:
        return chromium, driver
    reason = ('Chromium and its WebDriver are not installed (Debian: apt-get install chromium '
              'chromium-driver), so the browser tests cannot run')
    if os.environ.get('GANGEALING_REQUIRE_BROWSER'):
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def serving(engine):
    """Serve ``engine`` with uvicorn in a thread on a free local port; yields the page's URL."""
    import uvicorn

    sock = bind_socket('127.0.0.1', 0)
    uv = uvicorn.Server(uvicorn.Config(build_app(engine), log_level='warning'))
    thread = threading.Thread(target=uv.run, kwargs={'sockets': [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), 'the server did not start'
        time.sleep(0.05)
    try:
        yield page_url(sock)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """The studio on the tiny world."""
    world = make_world(tmp_path_factory.mktemp('studio_browser'))
    _, engine = build_engine(studio_argv(world, world['root'] / 'out', '--resolution', SIZE), verbose=False)
    with serving(engine) as url:
        yield {'url': url, 'engine': engine, 'world': world}


@pytest.fixture(scope='module')
def driver(server):
    chromium, chromedriver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix='studio-chromium-')
    for flag in CHROME_FLAGS + (f'--user-data-dir={profile}',):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver, script, expected, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script) == expected)


def open_page(driver, server):
    driver.get(server['url'])
    wait_until(driver, 'return document.body.dataset.templateReady', '1')


# Reads the pixels of every preview image: {index: {kind: [H][W][3]}}.
READ_PREVIEWS = """
const out = {};
for (const fig of document.querySelectorAll('#grid figure.item')) {
  out[fig.dataset.index] = {};
  for (const kind of ['original', 'propagated']) {
    const img = fig.querySelector('img.' + kind);
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const rows = [];
    for (let y = 0; y < canvas.height; y++) {
      const row = [];
      for (let x = 0; x < canvas.width; x++) {
        const i = 4 * (y * canvas.width + x);
        row.push([data[i], data[i + 1], data[i + 2]]);
      }
      rows.push(row);
    }
    out[fig.dataset.index][kind] = rows;
  }
}
return out;
"""


def css_offset(template_x, template_y):
    """Offset from the stage's centre (Selenium's origin) of a template pixel's centre."""
    scale = STAGE_CSS_PIXELS / SIZE
    return (round((template_x + 0.5) * scale - STAGE_CSS_PIXELS / 2),
            round((template_y + 0.5) * scale - STAGE_CSS_PIXELS / 2))


def test_a_stroke_drawn_in_the_browser_propagates_where_the_warp_sends_it(driver, server, tmp_path_factory):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    # The page says how many images have their alignment kept (the template's, all of them here).
    keep = server['engine'].keep_count()
    assert keep > 0
    wait_until(driver, 'return document.body.dataset.keptWarps', str(keep))
    assert driver.find_element(By.ID, 'warps').text == f'{keep} images aligned: their previews are fast'
    driver.execute_script("const s = document.getElementById('brush-size'); s.value = '2';"
                          "s.dispatchEvent(new Event('input'));")
    count = driver.find_element(By.ID, 'count')
    count.clear()
    count.send_keys('4')
    # A horizontal stroke along template row 20, from x = 4 to x = 12.
    stage = driver.find_element(By.ID, 'overlay')
    start, end = css_offset(4, 20), css_offset(12, 20)
    (ActionChains(driver).move_to_element_with_offset(stage, *start).click_and_hold()
     .move_to_element_with_offset(stage, (start[0] + end[0]) // 2, end[1])
     .move_to_element_with_offset(stage, *end).release().perform())
    driver.find_element(By.ID, 'propagate').click()
    wait_until(driver, 'return document.body.dataset.previews', '1')
    assert driver.find_element(By.ID, 'message').get_attribute('hidden') is not None
    shot = tmp_path_factory.mktemp('artefacts') / 'edit_studio.png'
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10000
    print(f'screenshot: {shot}')

    # The label the page sent is the stroke: template row 20, x 4..12 (brush 2 pixels wide).
    alpha = server['engine'].label[..., 3]
    assert alpha.shape == (SIZE, SIZE)
    assert (alpha[19:21, 5:12] > 0).all() and not alpha[:17].any() and not alpha[24:].any()

    previews = driver.execute_script(READ_PREVIEWS)
    assert sorted(int(k) for k in previews) == [0, 1, 2, 3]
    for index, kinds in previews.items():
        original = np.array(kinds['original'], dtype=np.int64)
        propagated = np.array(kinds['propagated'], dtype=np.int64)
        assert (original == server['world']['images'][int(index)]).all()
        change = np.abs(propagated - original).sum(axis=-1)
        # Where the stroke lands, the image changed: its centre is 4 pixels to the right of the
        # stroke's centre in the template (pixel x 8, y 20)...
        assert (change[19:21, 5 + SHIFT_PIXELS:12 + SHIFT_PIXELS] > 30).all(), index
        rows, columns = np.nonzero(change > 60)
        assert columns.mean() == pytest.approx(8 + SHIFT_PIXELS, abs=0.75), index
        assert rows.mean() == pytest.approx(20, abs=0.75), index
        # ...and away from it (more than the splat's reach) nothing did.
        assert (change[:14] == 0).all() and (change[26:] == 0).all(), index
        assert (change[:, :3] == 0).all() and (change[:, 22:] == 0).all(), index


def test_undo_clear_and_a_bad_upload_on_the_page(driver, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    painted = "return document.getElementById('label').getContext('2d').getImageData(0, 0, %d, %d).data" \
              ".some((v, i) => i %% 4 === 3 && v > 0)" % (SIZE, SIZE)
    # The page starts from the server's label (the last one sent).
    wait_until(driver, painted, True, timeout=30)
    driver.find_element(By.ID, 'clear').click()
    assert driver.execute_script(painted) is False
    stage = driver.find_element(By.ID, 'overlay')
    ActionChains(driver).move_to_element_with_offset(stage, 0, 0).click_and_hold().move_by_offset(60, 0) \
        .release().perform()
    assert driver.execute_script(painted) is True
    driver.find_element(By.ID, 'undo').click()
    assert driver.execute_script(painted) is False
    ActionChains(driver).move_to_element_with_offset(stage, 0, 0).click().perform()
    assert driver.execute_script(painted) is True
    driver.find_element(By.ID, 'clear').click()
    assert driver.execute_script(painted) is False

    bad = tmp_path / 'notes.png'
    bad.write_text('not an image')
    driver.find_element(By.ID, 'label-file').send_keys(str(bad))
    wait_until(driver, "return document.getElementById('message').hidden", False, timeout=30)
    message = driver.find_element(By.ID, 'message').text
    assert 'Could not load the label' in message and 'not a readable image' in message
    # Propagating an empty label is refused with a message, and the page stays usable.
    driver.find_element(By.ID, 'propagate').click()
    wait_until(driver, "return document.getElementById('message').textContent.includes('empty')", True, timeout=30)


def test_the_video_export_button_writes_the_propagated_mp4(driver, server, tmp_path_factory):
    """On a video the page offers the mp4 export (on images it does not); clicking it shows the
    progress, then a download of the whole video with the stroke where the warp sends it."""
    pytest.importorskip('av', reason='video needs PyAV (pip install -e .[video])')
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from synthetic_world.moving_face import iter_synthetic_video
    from utils.video_io import VideoReader, VideoWriter

    open_page(driver, server)
    assert not driver.find_element(By.ID, 'export-video').is_displayed()  # image data: zip only
    root = tmp_path_factory.mktemp('studio_browser_video')
    video = str(root / 'face.mp4')
    with VideoWriter(video, 24) as writer:
        for frames, _ in iter_synthetic_video(6, SIZE, 5):
            writer.write(frames)
    argv = ['--ckpt', server['world']['ckpt'], '--real_data_path', video, '--real_size', str(SIZE), '--device', 'cpu',
            '--batch', '4', '--out', str(root / 'out'), '--resolution', str(SIZE), '--n_mean', '6']
    _, engine = build_engine(argv, verbose=False)
    with serving(engine) as url:
        driver.get(url)
        wait_until(driver, 'return document.body.dataset.templateReady', '1')
        assert driver.find_element(By.ID, 'export-video').is_displayed()
        assert '6 frames of 32 x 32, 24 frames/s' in driver.find_element(By.ID, 'video-facts').text
        driver.execute_script("const s = document.getElementById('brush-size'); s.value = '2';"
                              "s.dispatchEvent(new Event('input'));")
        stage = driver.find_element(By.ID, 'overlay')
        start, end = css_offset(4, 20), css_offset(12, 20)
        (ActionChains(driver).move_to_element_with_offset(stage, *start).click_and_hold()
         .move_to_element_with_offset(stage, *end).release().perform())
        driver.find_element(By.ID, 'export-video').click()
        wait_until(driver, 'return document.body.dataset.videoExports', '1')
        assert driver.find_element(By.ID, 'message').get_attribute('hidden') is not None
        assert driver.find_element(By.ID, 'video-progress').text.startswith('video: 6 frames in')
        link = driver.find_element(By.ID, 'download-video')
        name = link.get_attribute('download')
        assert link.is_displayed() and name.endswith('.mp4')
        assert link.get_attribute('href') == f'{url}api/download/{name}'
    with VideoReader(str(root / 'out' / name)) as reader:
        exported = np.stack(list(reader))
        assert reader.fps == 24
    with VideoReader(video) as reader:
        source = np.stack(list(reader))
    assert exported.shape == source.shape == (6, SIZE, SIZE, 3)
    change = np.abs(exported.astype(np.int64) - source).sum(axis=-1)
    # The stroke (template row 20, x 4..12) lands 4 pixels to the right; far from it only codec noise.
    assert (change[:, 19:21, 6 + SHIFT_PIXELS:11 + SHIFT_PIXELS] > 30).all()
    assert change[:, :14].mean() < 15 and change[:, 26:].mean() < 15
