"""utils.download against a local HTTP server with Range support."""
import hashlib
import http.server
import os
import re
import socket
import threading

import pytest

from utils.download import DownloadError, download_file, resolve_weights
from utils.errors import UserError


class FileServer:
    """An HTTP server on 127.0.0.1 serving ``files`` ({url path: bytes}).

    Honours ``Range: bytes=N-`` with 206 responses. ``drop_after[path] = n``
    makes the next response for ``path`` announce the full size but close the
    connection after ``n`` body bytes (once). ``requests`` records
    (path, Range header) of every GET.
    """

    def __init__(self, files):
        self.files = dict(files)
        self.drop_after = {}
        self.requests = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                range_header = self.headers.get('Range')
                with server.lock:
                    server.requests.append((self.path, range_header))
                    drop = server.drop_after.pop(self.path, None)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, 'not found')
                    return
                start = 0
                if range_header:
                    start = int(re.match(r'bytes=(\d+)-', range_header).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header('Content-Range', f'bytes */{len(data)}')
                        self.send_header('Content-Length', '0')
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if drop is not None:
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path):
        return f'http://127.0.0.1:{self.httpd.server_port}{path}'

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path='/missing.bin'):
    """A URL on 127.0.0.1 where nothing listens (connection refused: 'offline')."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}{path}'


PAYLOAD = os.urandom(300_000)


def test_download_writes_file_and_leaves_no_partials(tmp_path):
    with FileServer({'/w.bin': PAYLOAD}) as server:
        dest = tmp_path / 'sub' / 'w.bin'
        result = download_file(server.url('/w.bin'), str(dest), progress=False)
        assert result == str(dest)
        assert dest.read_bytes() == PAYLOAD
        assert sorted(os.listdir(dest.parent)) == ['w.bin', 'w.bin.lock']
        # A second call finds the file and does not ask the server again.
        download_file(server.url('/w.bin'), str(dest), progress=False)
        assert len(server.requests) == 1


def test_dropped_connection_then_second_call_resumes_with_range(tmp_path):
    with FileServer({'/w.bin': PAYLOAD}) as server:
        server.drop_after['/w.bin'] = 120_000
        dest = tmp_path / 'w.bin'
        with pytest.raises(DownloadError) as info:
            download_file(server.url('/w.bin'), str(dest), progress=False, retries=0)
        assert 'resume' in str(info.value)
        assert not dest.exists()
        partial = (tmp_path / 'w.bin.part').read_bytes()
        assert 0 < len(partial) <= 120_000 and PAYLOAD.startswith(partial)

        download_file(server.url('/w.bin'), str(dest), progress=False, retries=0)
        assert dest.read_bytes() == PAYLOAD
        assert server.requests[-1] == ('/w.bin', f'bytes={len(partial)}-')
        assert not (tmp_path / 'w.bin.part').exists()


def test_retries_resume_within_one_call(tmp_path):
    with FileServer({'/w.bin': PAYLOAD}) as server:
        server.drop_after['/w.bin'] = 200_000
        dest = tmp_path / 'w.bin'
        download_file(server.url('/w.bin'), str(dest), progress=False, retries=2)
        assert dest.read_bytes() == PAYLOAD
        assert [r[1] is not None for r in server.requests] == [False, True]


def test_sha256_mismatch_is_refused_and_removed(tmp_path):
    with FileServer({'/w.bin': PAYLOAD}) as server:
        dest = tmp_path / 'w.bin'
        with pytest.raises(DownloadError) as info:
            download_file(server.url('/w.bin'), str(dest), sha256='0' * 64, progress=False)
        assert 'sha256' in str(info.value)
        assert not dest.exists() and not (tmp_path / 'w.bin.part').exists()
        good = hashlib.sha256(PAYLOAD).hexdigest()
        download_file(server.url('/w.bin'), str(dest), sha256=good, progress=False)
        assert dest.read_bytes() == PAYLOAD


def test_offline_error_names_url_and_destination(tmp_path):
    url = closed_port_url('/weights.pt')
    dest = tmp_path / 'weights.pt'
    with pytest.raises(DownloadError) as info:
        download_file(url, str(dest), progress=False)
    message = str(info.value)
    assert url in message and str(dest) in message
    assert isinstance(info.value, UserError)
    assert not dest.exists()


def test_http_error_is_a_download_error(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(DownloadError) as info:
            download_file(server.url('/nope.bin'), str(tmp_path / 'nope.bin'), progress=False)
        assert '404' in str(info.value) and server.url('/nope.bin') in str(info.value)


def test_parallel_callers_download_once(tmp_path):
    with FileServer({'/w.bin': PAYLOAD}) as server:
        dest = str(tmp_path / 'w.bin')
        errors = []

        def fetch():
            try:
                download_file(server.url('/w.bin'), dest, progress=False)
            except Exception as e:  # surfaced below
                errors.append(e)
        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(server.requests) == 1
        assert open(dest, 'rb').read() == PAYLOAD


def test_resolve_weights_order(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    with FileServer({'/vgg.pth': PAYLOAD}) as server:
        explicit = tmp_path / 'mine.pth'
        explicit.write_bytes(b'local')
        assert resolve_weights('vgg.pth', server.url('/vgg.pth'), explicit_path=str(explicit)) == str(explicit)
        with pytest.raises(UserError):
            resolve_weights('vgg.pth', server.url('/vgg.pth'), explicit_path=str(tmp_path / 'absent.pth'))
        assert server.requests == []

        path = resolve_weights('vgg.pth', server.url('/vgg.pth'))
        assert path == str(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'vgg.pth')
        assert open(path, 'rb').read() == PAYLOAD
        assert resolve_weights('vgg.pth', server.url('/vgg.pth')) == path
        assert len(server.requests) == 1
