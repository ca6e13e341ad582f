"""HTTP face of the edit studio: a Starlette app over a ``StudioEngine``.

Routes (JSON errors are {'error': message} with a 4xx/5xx status, never a traceback):
- GET  /                       the page; GET /static/NAME its files (this package's static/ only)
- GET  /api/info               facts the page needs (sizes, clusters, defaults)
- GET  /api/status?cluster=K   progress of the template computation
- GET  /api/template?cluster=K the template PNG (202 with the progress while it is computed)
- POST /api/label              body: an image (the label); GET /api/label: it as RGBA PNG
- POST /api/object             body: an image to place; answers it re-encoded as RGBA PNG
- POST /api/preview            JSON {selection, sigma, opacity, objects, cluster} -> preview images
- POST /api/export             the same (+ 'all') -> a zip in the output folder
- POST /api/export_video       the same -> starts the propagated mp4 of the whole video (video data only)
- GET  /api/export_video       that export's progress (state, frames done / total, url when done)
- GET  /api/download/NAME      an export made by this server (zip or mp4)
"""
import json
import os
import traceback

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from applications.studio.engine import MAX_UPLOAD_BYTES, RequestError
from utils.errors import UserError
from utils.image_io import encode_image

STATIC_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')
MAX_JSON_BYTES = 64 * 1024
NO_STORE = {'Cache-Control': 'no-store'}


def _error(message, status):
    return JSONResponse({'error': message}, status_code=status, headers=NO_STORE)


async def read_body(request, limit):
    """The request body, refused with RequestError(413) past ``limit`` bytes (checked while reading)."""
    declared = request.headers.get('content-length')
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f'the upload is larger than {limit // 1024} KiB', status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f'the upload is larger than {limit // 1024} KiB', status=413)
        chunks.append(chunk)
    return b''.join(chunks)


async def read_json(request):
    body = await read_body(request, MAX_JSON_BYTES)
    try:
        value = json.loads(body or b'{}')
    except ValueError:
        raise RequestError('the request is not valid JSON') from None
    if not isinstance(value, dict):
        raise RequestError('the request must be a JSON object')
    return value


def build_app(engine):
    """The Starlette application serving ``engine`` (see the module docstring for the routes)."""

    def cluster_of(request):
        value = request.query_params.get('cluster')
        return engine.check_cluster(engine.default_cluster() if value is None else value)

    async def index(request):
        return FileResponse(os.path.join(STATIC_FOLDER, 'index.html'), headers=NO_STORE)

    async def info(request):
        return JSONResponse(engine.info(), headers=NO_STORE)

    async def status(request):
        cluster = cluster_of(request)
        engine.request_average(cluster)
        return JSONResponse(engine.average_status(cluster), headers=NO_STORE)

    async def template(request):
        cluster = cluster_of(request)
        image = engine.template_image(cluster)
        record = engine.average_status(cluster)
        if record['state'] == 'failed':
            return _error(f"the template could not be made: {record['error']}", 500)
        if image is None:
            return JSONResponse(record, status_code=202, headers=NO_STORE)
        return Response(encode_image(image), media_type='image/png', headers=NO_STORE)

    async def put_label(request):
        data = await read_body(request, MAX_UPLOAD_BYTES)
        return JSONResponse(await run_in_threadpool(engine.set_label, data), headers=NO_STORE)

    async def get_label(request):
        data = engine.label_png()
        if data is None:
            return _error('there is no label yet', 404)
        headers = dict(NO_STORE)
        if request.query_params.get('download'):
            headers['Content-Disposition'] = 'attachment; filename="label.png"'
        return Response(data, media_type='image/png', headers=headers)

    async def put_object(request):
        data = await read_body(request, MAX_UPLOAD_BYTES)
        rgba = await run_in_threadpool(engine.decode_upload, data, 'object')
        return Response(encode_image(rgba), media_type='image/png', headers=NO_STORE)

    async def preview(request):
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(engine.preview, body), headers=NO_STORE)

    async def export(request):
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(engine.export, body), headers=NO_STORE)

    async def start_video_export(request):
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(engine.start_video_export, body), headers=NO_STORE)

    async def video_export_status(request):
        return JSONResponse(engine.video_export_status(), headers=NO_STORE)

    async def download(request):
        path = engine.export_path(request.path_params['name'])
        if path is None:
            return _error('no such export', 404)
        media_type = 'video/mp4' if path.endswith('.mp4') else 'application/zip'
        return FileResponse(path, media_type=media_type, filename=os.path.basename(path))

    async def request_error(request, exc):
        return _error(str(exc), getattr(exc, 'status', 400))

    async def http_error(request, exc):
        if request.url.path.startswith('/api/'):
            return _error(exc.detail or 'error', exc.status_code)
        return Response(exc.detail or 'error', status_code=exc.status_code, media_type='text/plain')

    async def unexpected_error(request, exc):
        # A bug, not a bad request: the trace goes to the server's log, a message to the page.
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return _error(f'internal error ({type(exc).__name__}); see the server log', 500)

    routes = [
        Route('/', index),
        Route('/api/info', info),
        Route('/api/status', status),
        Route('/api/template', template),
        Route('/api/label', get_label, methods=['GET']),
        Route('/api/label', put_label, methods=['POST']),
        Route('/api/object', put_object, methods=['POST']),
        Route('/api/preview', preview, methods=['POST']),
        Route('/api/export', export, methods=['POST']),
        Route('/api/export_video', start_video_export, methods=['POST']),
        Route('/api/export_video', video_export_status, methods=['GET']),
        Route('/api/download/{name}', download),
        Mount('/static', app=StaticFiles(directory=STATIC_FOLDER), name='static'),
    ]
    handlers = {UserError: request_error, HTTPException: http_error, Exception: unexpected_error}
    return Starlette(routes=routes, exception_handlers=handlers)
