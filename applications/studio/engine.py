"""The studio's state and work: the template, the current label, previews and exports.

Every computation goes through ``applications.common.propagation`` (the functions
``applications.propagate_to_images`` uses), so the page shows exactly what
the command line would write. One lock serialises use of the model and the
dataset; the template (average congealed image) of each cluster is computed
once in a background thread, with progress readable meanwhile, and cached in
a PNG file.

The alignment of an image (its flip decision and warp, not its pixels) does
not depend on the label, so the warps of the first min(--n_mean,
--keep_warps) images of a cluster are kept for the whole session: the
template's computation yields them; a template read from a file is followed
by aligning those images in the background, a few per lock hold, previews
first. A preview of kept images runs no network pass, only the splat.

A video file is read by frame number (``datasets.video.IndexedVideoFrames``:
frames decoded when asked, never the whole video in memory); its template
and previews work as for images, and its export is the propagated mp4 of
every frame, made in a background job whose progress the page polls
(``applications.studio.video_export``).
"""
import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from applications.common.models import cluster_policy
from applications.common.propagation import (Alignment, Label, align, label_from_rgba, option_problems,
                                             propagate_aligned, splat_label, square_label_problem)
from applications.studio.video_export import video_facts, write_propagated_video
from datasets.video import IndexedVideoFrames
from models.gangealing import CongealedMean
from utils.atomic_io import atomic_write
from utils.colour_scales import scale_for_cluster
from utils.errors import UserError
from utils.image_io import (UntrustedImageError, array_to_tensor, decode_untrusted_image, encode_image,
                            read_image_file, resize_array, tensor_to_uint8)

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # labels and objects are small PNGs; more is refused unread
MAX_UPLOAD_SIDE = 4096  # pixels per side of an uploaded label or object
MAX_PREVIEW_IMAGES = 64
PREVIEW_SIDE = 256  # preview images larger than this are shrunk before they are sent
CONGEAL_CACHE = 64  # images outside the kept warps whose alignment is kept between previews
KEEP_BATCH = 4  # images aligned per lock hold in the background: a preview waits for one such batch at most
VIDEO_BATCH = 8  # frames of a video export per lock hold, for the same reason
SELECTION_MODES = ('first', 'random', 'indices')
EXPORT_NAME = re.compile(r'^propagated-[0-9]{8}-[0-9]{6}-[0-9]{3}\.(zip|mp4)$')
AVERAGES_FOLDER = 'congealed_averages'


class RequestError(UserError):
    """A request the page made that cannot be honoured; the message is shown on the page."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _data_url(array):
    """uint8 (H, W, 3) array -> a PNG data URL."""
    return 'data:image/png;base64,' + base64.b64encode(encode_image(array)).decode('ascii')


def _shrink(images, side):
    """(N, 3, S, S) -> at most ``side`` pixels per side (anti-aliased), for display only."""
    if images.size(-1) <= side:
        return images
    return F.interpolate(images, size=(side, side), mode='bilinear', align_corners=False, antialias=True)


def _export_name(extension):
    """propagated-YYYYMMDD-HHMMSS-mmm.EXTENSION: a name EXPORT_NAME accepts."""
    now = time.time()
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(now)) + f'-{int(now * 1000) % 1000:03d}'
    return f'propagated-{stamp}.{extension}'


def _file_fingerprint(path):
    try:
        stat = os.stat(path)
    except OSError:
        return path  # a released model's name: its download is fixed
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns]


class StudioEngine:
    """What the edit studio serves.

    Args:
        opt: evaluation options with the propagation flags (parsed, architecture
            filled in by ``load_stn``, output_resolution set).
        t: the spatial transformer (eval mode).
        dataset: images (3, S, S) in [-1, 1] at ``opt.real_size``.
        device: where ``t`` runs.
    """

    def __init__(self, opt, t, dataset, device):
        self.opt = opt
        self.t = t
        self.dataset = dataset
        self.device = device
        self.model_lock = threading.Lock()  # the model, the dataset and the label tensors
        self.state_lock = threading.Lock()  # the averages' progress records
        self.averages = {}
        self.label = None  # uint8 (H, W, 4) RGBA
        self._congeal_cache = {}  # (index, cluster) -> (image, input, mirrored, congealed, warp), oldest first
        self._kept_warps = {}  # (index, cluster) -> (mirrored, warp): never evicted, at most keep_warps
        self._foreground_waiting = 0  # requests waiting for model_lock; background work lets them go first
        self.video = dataset if isinstance(dataset, IndexedVideoFrames) else None  # a video file's frames
        # What an mp4 export is made of (a video file, or a dataset given --fps), or None: no mp4 export.
        self.video_facts = video_facts(dataset, getattr(opt, 'fps', None), opt.real_size)
        self._video_job = None  # the latest video export's progress record
        if opt.label_path is not None:
            self.set_label(self._read_start_label(opt.label_path), what=f"label '{opt.label_path}'")

    # ------------------------------------------------------------------ facts for the page

    @property
    def num_clusters(self):
        return max(1, int(self.opt.num_heads))

    @property
    def template_size(self):
        return int(self.opt.output_resolution)

    def info(self):
        """What the page needs to set itself up (JSON-able)."""
        opt = self.opt
        return {
            'num_images': len(self.dataset),
            'real_size': opt.real_size,
            'template_size': self.template_size,
            'clusters': self.num_clusters,
            'cluster': self.default_cluster(),
            'sigma': opt.sigma,
            'opacity': opt.opacity,
            'objects': bool(opt.objects),
            'resolution': opt.resolution,
            'max_preview': MAX_PREVIEW_IMAGES,
            'max_upload_bytes': MAX_UPLOAD_BYTES,
            'indices': list(opt.dset_indices) if opt.dset_indices is not None else None,
            'has_label': self.label is not None,
            'keep_warps': self.keep_count(),
            'video': self.video_facts,
            'command': self.command(),
        }

    def command(self):
        """The command line that propagates a saved label as the page does (without the label's flags)."""
        opt = self.opt
        common = ['--ckpt', str(opt.ckpt), '--real_data_path', str(opt.real_data_path),
                  '--real_size', str(opt.real_size), '--resolution', str(opt.resolution)]
        facts = self.video_facts
        if facts is not None:
            pad = ['--pad', facts['pad']] if facts['pad'] is not None else ['--dataset_mode', str(opt.dataset_mode)]
            return ['python', '-m', 'applications.mixed_reality'] + common + pad + ['--fps', f"{facts['export_fps']:g}"]
        return (['python', '-m', 'applications.propagate_to_images'] + common
                + ['--dataset_mode', str(opt.dataset_mode)])

    def default_cluster(self):
        return int(self.opt.cluster) if self.opt.cluster is not None else 0

    def check_cluster(self, value):
        try:
            cluster = int(value)
        except (TypeError, ValueError):
            raise RequestError(f'cluster must be a whole number, got {value!r}') from None
        if not 0 <= cluster < self.num_clusters:
            raise RequestError(f'cluster {cluster} does not exist: this model has {self.num_clusters} '
                               f'cluster(s), 0 to {self.num_clusters - 1}')
        return cluster

    def request_options(self, cluster=None, sigma=None, opacity=None, objects=None):
        """A copy of the options for one request, checked like the command line's."""
        opt = argparse.Namespace(**vars(self.opt))
        opt.cluster = self.check_cluster(self.default_cluster() if cluster is None else cluster)
        try:
            if sigma is not None:
                opt.sigma = float(sigma)
            if opacity is not None:
                opt.opacity = float(opacity)
        except (TypeError, ValueError):
            raise RequestError('sigma and opacity must be numbers') from None
        if objects is not None:
            opt.objects = bool(objects)
        problems = [p.replace('--', '') for p in option_problems(opt)]
        if problems:
            raise RequestError('; '.join(problems))
        return opt

    # ------------------------------------------------------------------ the template

    def average_count(self):
        return min(int(self.opt.n_mean), len(self.dataset))

    def keep_count(self):
        """How many first images of a cluster get their warps kept: min(--n_mean, --keep_warps, dataset)."""
        return min(self.average_count(), self.warp_cap())

    def warp_cap(self):
        """--keep_warps: the most warps kept, all clusters together."""
        return max(0, int(self.opt.keep_warps))

    def kept_warps(self, cluster=None):
        """Number of kept warps (of ``cluster``, or of all clusters)."""
        with self.state_lock:
            return sum(1 for _, c in self._kept_warps if cluster is None or c == cluster)

    def kept_warp_bytes(self):
        """Memory held by the kept warps (flip flags included), in bytes."""
        with self.state_lock:
            entries = list(self._kept_warps.values())
        return sum(w.numel() * w.element_size() + m.numel() * m.element_size() for m, w in entries)

    @contextlib.contextmanager
    def _model(self, background=False):
        """Hold model_lock. Background work first waits until no request is waiting for it, so a
        request waits for at most one background batch, never for the whole background job."""
        if background:
            while self._foreground_waiting:
                time.sleep(0.01)
            self.model_lock.acquire()
        else:
            with self.state_lock:
                self._foreground_waiting += 1
            try:
                self.model_lock.acquire()
            finally:
                with self.state_lock:
                    self._foreground_waiting -= 1
        try:
            yield
        finally:
            self.model_lock.release()

    def _keep(self, cluster, indices, alignment):
        """Keep the warps of those ``indices`` (rows of ``alignment``) among the first keep_count()
        images, while the cap (--keep_warps, all clusters together) allows; needs model_lock."""
        limit = self.keep_count()
        with self.state_lock:
            for k, index in enumerate(indices):
                key = (index, cluster)
                if index < limit and key not in self._kept_warps and len(self._kept_warps) < self.warp_cap():
                    # Copies: a row view would keep the whole batch's tensor alive.
                    self._kept_warps[key] = (alignment.mirrored[k].clone(), alignment.warp[k].clone())

    def average_cache_path(self, cluster):
        """Where the average of ``cluster`` is cached: beside an LMDB dataset (a folder no image
        listing reads), otherwise (image folders, video files) in the output folder; the name
        encodes what it depends on."""
        opt = self.opt
        parts = [_file_fingerprint(opt.ckpt), os.path.realpath(opt.real_data_path), opt.dataset_mode,
                 opt.real_size, opt.output_resolution, self.average_count(), cluster, opt.padding_mode,
                 opt.iters, bool(opt.no_flip_inference)]
        if self.video is not None:  # another file under the same name, or other squares, is another template
            parts += [_file_fingerprint(opt.real_data_path), self.video.pad]
        key = json.dumps(parts)
        digest = hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]
        folder = os.path.join(opt.out, AVERAGES_FOLDER)
        if self.video is None and opt.dataset_mode == 'lmdb' and os.access(opt.real_data_path, os.W_OK):
            folder = os.path.join(opt.real_data_path, AVERAGES_FOLDER)
        return os.path.join(folder, f'average-{digest}-cluster{cluster}.png')

    def average_status(self, cluster):
        """{'cluster', 'state': 'waiting'|'computing'|'ready'|'failed', 'done', 'total', 'error',
        'kept', 'keep'}: the template's progress, and how many of the first 'keep' images of the
        cluster have their warps kept (previews of them run no network pass)."""
        with self.state_lock:
            record = dict(self.averages.get(cluster) or {'state': 'waiting', 'done': 0, 'total': 0, 'error': None})
            record['kept'] = sum(1 for _, c in self._kept_warps if c == cluster)
            # What the cap still allows this cluster (other clusters' kept warps count against it).
            record['keep'] = min(self.keep_count(), record['kept'] + self.warp_cap() - len(self._kept_warps))
        record.pop('image', None)
        record['cluster'] = cluster
        return record

    def request_average(self, cluster):
        """Start computing the template of ``cluster`` in the background (once)."""
        with self.state_lock:
            if cluster in self.averages:
                return
            self.averages[cluster] = {'state': 'computing', 'done': 0, 'total': self.average_count(),
                                      'error': None, 'image': None}
        threading.Thread(target=self._compute_average, args=(cluster,), daemon=True,
                         name=f'studio-average-{cluster}').start()

    def wait_for_average(self, cluster, timeout=None):
        """Block until the template of ``cluster`` is ready; returns uint8 (R, R, 3). Raises RequestError."""
        self.request_average(cluster)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.state_lock:
                record = self.averages[cluster]
                if record['state'] == 'ready':
                    return record['image']
                if record['state'] == 'failed':
                    raise RequestError(f"the template could not be made: {record['error']}", status=500)
            if deadline is not None and time.monotonic() > deadline:
                raise RequestError('the template is still being computed', status=503)
            time.sleep(0.05)

    def template_image(self, cluster):
        """uint8 (R, R, 3) template of ``cluster`` when ready, else None (computation started)."""
        self.request_average(cluster)
        with self.state_lock:
            record = self.averages[cluster]
            return record['image'] if record['state'] == 'ready' else None

    def _progress(self, cluster, done):
        with self.state_lock:
            self.averages[cluster]['done'] = done

    def _compute_average(self, cluster):
        try:
            image = self._make_average(cluster)
        except Exception as e:  # reported on the page; the server keeps running
            with self.state_lock:
                self.averages[cluster].update(state='failed', error=str(e) or type(e).__name__)
            print(f'edit studio: the template of cluster {cluster} could not be made: {e}', flush=True)
            return
        with self.state_lock:
            self.averages[cluster].update(state='ready', image=image, done=self.averages[cluster]['total'])
        try:
            self._keep_first_warps(cluster)
        except Exception as e:  # previews still align on demand
            print(f'edit studio: aligning the first images of cluster {cluster} failed: {e}', flush=True)

    def _keep_first_warps(self, cluster):
        """Align the first keep_count() images of ``cluster`` whose warps are not kept yet (after a
        template read from a file; after a computed one nothing is left), a few per lock hold."""
        opt = self.request_options(cluster=cluster)
        count = self.keep_count()
        batch = max(1, min(KEEP_BATCH, opt.batch or KEEP_BATCH))
        start = 0
        while start < count and len(self._kept_warps) < self.warp_cap():
            with self._model(background=True):
                todo = []
                while start < count and len(todo) < batch:
                    if (start, cluster) not in self._kept_warps:
                        todo.append(start)
                    start += 1
                if todo:
                    images = torch.stack([self.dataset[i] for i in todo]).to(self.device)
                    self._keep(cluster, todo, align(self.t, opt, images))
            self._background_step(cluster)

    def _background_step(self, cluster):
        """Called between background batches, outside the lock (a hook for tests)."""

    def _make_average(self, cluster):
        size = self.template_size
        if self.opt.average_path is not None:
            return resize_array(read_image_file(self.opt.average_path), size, size)
        path = self.average_cache_path(cluster)
        if os.path.isfile(path):
            try:
                image = read_image_file(path)
                if image.shape[:2] == (size, size):
                    print(f'edit studio: template of cluster {cluster} read from {path}', flush=True)
                    return image
            except OSError:
                pass  # a damaged cache file is recomputed and replaced
        opt = self.request_options(cluster=cluster)
        count = self.average_count()
        print(f'edit studio: averaging {count} congealed images for the template of cluster {cluster}...',
              flush=True)
        loader = DataLoader(Subset(self.dataset, list(range(count))), batch_size=opt.batch, shuffle=False,
                            num_workers=opt.num_workers, drop_last=False,
                            multiprocessing_context='spawn' if opt.num_workers > 0 else None)
        mean = CongealedMean(1, 3, opt.output_resolution, self.device)
        done = 0
        for images in loader:
            with self._model(background=True):
                alignment = align(self.t, opt, images.to(self.device))
                mean.add(alignment.congealed)
                # The template's alignments are the previews': keep their warps.
                self._keep(cluster, list(range(done, done + images.size(0))), alignment)
            done += images.size(0)
            self._progress(cluster, done)
        # Stretched to the full range, as propagate_to_images saves average.png.
        image = tensor_to_uint8(mean.result()[0][0], value_range=None)
        atomic_write(path, lambda f: f.write(encode_image(image)))
        print(f'edit studio: template of cluster {cluster} saved to {path}', flush=True)
        return image

    # ------------------------------------------------------------------ the label

    def _read_start_label(self, path):
        if not os.path.isfile(path):
            raise UserError(f"label '{path}' does not exist; check --label_path")
        with open(path, 'rb') as f:
            data = f.read(MAX_UPLOAD_BYTES + 1)
        return data

    def set_label(self, data, what='label'):
        """Take an uploaded label (encoded image bytes); ``what`` names it in error messages.

        An image without transparency is a mask (white is the label) and is
        stored as RGBA with that mask as alpha, which the command line reads
        the same way. A label is drawn on the square template, so it must be
        square. Returns {'width', 'height', 'pixels'}. Raises RequestError.
        """
        rgba = self.decode_upload(data, what)
        height, width = rgba.shape[:2]
        if height != width:
            raise RequestError(square_label_problem(what, width, height))
        with self._model():
            self.label = rgba
        return {'width': int(rgba.shape[1]), 'height': int(rgba.shape[0]),
                'pixels': int((rgba[..., 3] > 0).sum())}

    def decode_upload(self, data, what):
        """Upload bytes -> uint8 (H, W, 4) RGBA; masks without alpha get alpha from brightness."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise RequestError(f'the {what} file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB',
                               status=413)
        try:
            rgba, has_alpha = decode_untrusted_image(data, MAX_UPLOAD_SIDE)
        except UntrustedImageError as e:
            raise RequestError(f'the {what} was refused: {e}') from None
        if not has_alpha:
            bright = rgba[..., :3].astype(np.float32).mean(axis=-1) > 127.5
            rgba = rgba.copy()
            rgba[..., 3] = np.where(bright, 255, 0).astype(np.uint8)
        return rgba

    def label_png(self):
        """The current label as an RGBA PNG (what ``--label_path`` takes), or None."""
        with self._model():
            label = self.label
        return None if label is None else encode_image(label)

    def _label_tensors(self, opt):
        """The current label as a Label for ``opt`` (resolution, objects, the cluster's colour scale)."""
        if self.label is None:
            raise RequestError('there is no label yet: draw on the template or load a label first')
        scale = scale_for_cluster(opt.cluster if self.num_clusters > 1 else None)
        try:
            points, colours, alpha = label_from_rgba(self.label.astype(np.float32) / 255.0, True, opt.resolution,
                                                     opt.objects, self.device, scale=scale, name='the label')
        except UserError as e:
            raise RequestError(str(e)) from None
        return Label(points, colours, alpha, opt.resolution)

    # ------------------------------------------------------------------ selections, previews, exports

    def resolve_selection(self, selection, limit=MAX_PREVIEW_IMAGES):
        """{'mode': 'first'|'random'|'indices', 'count', 'seed', 'indices'} -> dataset indices."""
        selection = selection or {}
        if not isinstance(selection, dict):
            raise RequestError('selection must be an object')
        mode = selection.get('mode', 'first')
        n = len(self.dataset)
        if mode not in SELECTION_MODES:
            raise RequestError(f"selection mode must be one of {', '.join(SELECTION_MODES)}, got {mode!r}")
        if mode == 'indices':
            raw = selection.get('indices')
            if isinstance(raw, str):
                raw = [part for part in re.split(r'[\s,]+', raw.strip()) if part]
            try:
                indices = [int(i) for i in raw or []]
            except (TypeError, ValueError):
                raise RequestError('indices must be whole numbers separated by commas or spaces') from None
            if not indices:
                raise RequestError('give at least one index')
            bad = [i for i in indices if not 0 <= i < n]
            if bad:
                raise RequestError(f'index {bad[0]} is out of range: the dataset has {n} images '
                                   f'(indices 0 to {n - 1})')
        else:
            try:
                count = int(selection.get('count', 16))
                seed = int(selection.get('seed', 0))
            except (TypeError, ValueError):
                raise RequestError('count and seed must be whole numbers') from None
            if count < 1:
                raise RequestError(f'count must be at least 1 (got {count})')
            count = min(count, n)
            indices = (list(range(count)) if mode == 'first'
                       else sorted(random.Random(seed).sample(range(n), count)))
        if limit is not None and len(indices) > limit:
            raise RequestError(f'a preview shows at most {limit} images ({len(indices)} asked); export '
                               f'takes any number')
        return indices

    def _aligned(self, opt, indices):
        """(images, Alignment) of ``indices`` for ``opt.cluster``; needs model_lock.

        The flip decision, the alignment and the warp do not depend on the
        label, so they are kept for the last CONGEAL_CACHE images: a new label
        on the same images costs only the splat (no network pass). Images
        whose warps are kept (see ``_keep``) are rebuilt from them, also
        without a network pass; the others are aligned and kept if they belong
        to the first keep_count() images.
        """
        cluster = opt.cluster
        missing = [i for i in indices if (i, cluster) not in self._congeal_cache]
        with self.state_lock:
            kept = [(i, self._kept_warps[(i, cluster)]) for i in missing if (i, cluster) in self._kept_warps]
        if kept:
            images = torch.stack([self.dataset[i] for i, _ in kept]).to(self.device)
            mirrored = torch.stack([m for _, (m, _) in kept])
            warp = torch.stack([w for _, (_, w) in kept])
            # As align builds them: the mirrored image where the mirror was kept, sampled through the warp.
            inputs = torch.where(mirrored.view(-1, 1, 1, 1), images.flip(3), images)
            with torch.no_grad():
                congealed = self.t.warp_images(inputs, warp, opt.output_resolution, opt.padding_mode)
            for k, (index, _) in enumerate(kept):
                self._congeal_cache[(index, cluster)] = (images[k], inputs[k], mirrored[k], congealed[k], warp[k])
            missing = [i for i in missing if (i, cluster) not in self._congeal_cache]
        if missing:
            images = torch.stack([self.dataset[i] for i in missing]).to(self.device)
            alignment = align(self.t, opt, images)
            self._keep(cluster, missing, alignment)
            for k, index in enumerate(missing):
                self._congeal_cache[(index, opt.cluster)] = (images[k], alignment.inputs[k], alignment.mirrored[k],
                                                             alignment.congealed[k], alignment.warp[k])
        parts = [self._congeal_cache[(i, opt.cluster)] for i in indices]
        for key in indices:  # most recently used last
            self._congeal_cache[(key, opt.cluster)] = self._congeal_cache.pop((key, opt.cluster))
        while len(self._congeal_cache) > max(CONGEAL_CACHE, len(indices)):
            self._congeal_cache.pop(next(iter(self._congeal_cache)))
        images, inputs, mirrored, congealed, warp = (torch.stack(column) for column in zip(*parts))
        policy = cluster_policy(opt, len(indices), self.device)
        return images, Alignment(inputs, mirrored, policy, congealed, warp)

    def _propagate_batches(self, opt, indices, label, cache=True):
        """Yield (indices, images, congealed, propagated) in batches of ``opt.batch``; needs model_lock."""
        for start in range(0, len(indices), opt.batch):
            chunk = indices[start:start + opt.batch]
            if cache:
                images, alignment = self._aligned(opt, chunk)
            else:
                images = torch.stack([self.dataset[i] for i in chunk]).to(self.device)
                alignment = align(self.t, opt, images)
            propagated = propagate_aligned(self.t, opt, images, alignment, label, opt.blend_alg)
            yield chunk, images, alignment.congealed, propagated

    def annotated_template(self, opt, label):
        """The template of ``opt.cluster`` with the label drawn on it, uint8 (R, R, 3)."""
        average = self.wait_for_average(opt.cluster)
        tensor = array_to_tensor(average).unsqueeze(0).to(self.device)
        annotated = splat_label(tensor, label.pixels_at(tensor.size(-1)).unsqueeze(0), label.colours, label.alpha,
                                opt, opt.blend_alg)
        return tensor_to_uint8(annotated)[0]

    def preview(self, request):
        """Propagate the current label onto a few images.

        ``request``: {'selection', 'sigma', 'opacity', 'objects', 'cluster'}.
        Returns {'items': [{'index', 'original', 'congealed', 'propagated'}]
        (PNG data URLs), 'annotated_template', 'indices', 'seconds'}.
        """
        opt = self.request_options(request.get('cluster'), request.get('sigma'), request.get('opacity'),
                                   request.get('objects'))
        indices = self.resolve_selection(request.get('selection'))
        start = time.perf_counter()
        items = []
        with self._model():
            label = self._label_tensors(opt)
            for chunk, images, congealed, propagated in self._propagate_batches(opt, indices, label):
                originals = tensor_to_uint8(_shrink(images, PREVIEW_SIDE))
                aligned = tensor_to_uint8(_shrink(congealed, PREVIEW_SIDE))
                edited = tensor_to_uint8(_shrink(propagated, PREVIEW_SIDE))
                for k, index in enumerate(chunk):
                    items.append({'index': index, 'original': _data_url(originals[k]),
                                  'congealed': _data_url(aligned[k]), 'propagated': _data_url(edited[k])})
        annotated = self.annotated_template(opt, label)
        return {'items': items, 'indices': indices, 'annotated_template': _data_url(annotated),
                'seconds': round(time.perf_counter() - start, 3)}

    def export(self, request):
        """Write a zip of the propagated images at full resolution into the output folder.

        ``request`` is as for ``preview``, plus 'all': every image of the dataset.
        The zip holds propagated/INDEX.png, label.png and template_annotated.png.
        Returns {'name', 'url', 'count', 'seconds'}.
        """
        opt = self.request_options(request.get('cluster'), request.get('sigma'), request.get('opacity'),
                                   request.get('objects'))
        if request.get('all'):
            indices = list(range(len(self.dataset)))
        else:
            indices = self.resolve_selection(request.get('selection'), limit=None)
        start = time.perf_counter()
        name = _export_name('zip')
        width = max(5, len(str(len(self.dataset) - 1)))
        with self._model():
            label = self._label_tensors(opt)
            label_png = encode_image(self.label)
        annotated = encode_image(self.annotated_template(opt, label))

        def write(f):
            with zipfile.ZipFile(f, 'w', compression=zipfile.ZIP_STORED) as archive:
                archive.writestr('label.png', label_png)
                archive.writestr('template_annotated.png', annotated)
                for chunk, _, _, propagated in self._propagate_batches(opt, indices, label, cache=False):
                    for index, array in zip(chunk, tensor_to_uint8(propagated)):
                        archive.writestr(f'propagated/{index:0{width}d}.png', encode_image(array))
        with self._model():
            atomic_write(os.path.join(self.opt.out, name), write)
        return {'name': name, 'url': f'/api/download/{name}', 'count': len(indices),
                'seconds': round(time.perf_counter() - start, 3)}

    def start_video_export(self, request):
        """Start writing the propagated mp4 of the whole video (a video file, or the dataset's images in
        order when --fps was given) into the output folder, in the background.

        ``request`` is as for ``preview`` (its selection is not used: every
        frame is exported). Returns the job's progress record (see
        ``video_export_status``). Raises RequestError for image data without
        --fps, a missing label or an export already running.
        """
        if self.video_facts is None:
            raise RequestError('the data is not a video file (and no --fps says its images are frames): '
                               'export a zip of the images instead')
        opt = self.request_options(request.get('cluster'), request.get('sigma'), request.get('opacity'),
                                   request.get('objects'))
        with self._model():
            label = self._label_tensors(opt)
        with self.state_lock:
            if self._video_job is not None and self._video_job['state'] == 'running':
                raise RequestError('a video export is already running: wait for it to finish', status=409)
            job = {'state': 'running', 'done': 0, 'total': len(self.dataset), 'name': _export_name('mp4'),
                   'url': None, 'error': None, 'seconds': None}
            self._video_job = job
        threading.Thread(target=self._export_video, args=(job, opt, label), daemon=True,
                         name='studio-video-export').start()
        return self.video_export_status()

    def video_export_status(self):
        """{'state': 'idle'|'running'|'done'|'failed', 'done', 'total' (frames), 'name', 'url'
        (when done), 'error' (when failed), 'seconds'}: the latest video export."""
        with self.state_lock:
            if self._video_job is None:
                total = len(self.dataset) if self.video_facts is not None else 0
                return {'state': 'idle', 'done': 0, 'total': total,
                        'name': None, 'url': None, 'error': None, 'seconds': None}
            return dict(self._video_job)

    def _export_video(self, job, opt, label):
        start = time.perf_counter()

        def progress(done):
            with self.state_lock:
                job['done'] = done

        try:
            count = write_propagated_video(self.t, opt, self.dataset, self.video_facts['export_fps'], label,
                                           os.path.join(self.opt.out, job['name']), self.device,
                                           lambda: self._model(background=True), progress=progress,
                                           batch=min(VIDEO_BATCH, opt.batch or VIDEO_BATCH))
        except Exception as e:  # reported on the page; the server keeps running
            with self.state_lock:
                job.update(state='failed', error=str(e) or type(e).__name__)
            print(f"edit studio: the video export {job['name']} failed: {e}", flush=True)
            return
        with self.state_lock:
            job.update(state='done', done=count, total=count, url=f"/api/download/{job['name']}",
                       seconds=round(time.perf_counter() - start, 3))

    def export_path(self, name):
        """The path of an export in the output folder, or None: only names this studio writes
        (no folders, no '..') and only files inside the output folder."""
        if not isinstance(name, str) or not EXPORT_NAME.match(name):
            return None
        folder = os.path.realpath(self.opt.out)
        path = os.path.realpath(os.path.join(folder, name))
        if os.path.dirname(path) != folder or not os.path.isfile(path):
            return None
        return path
