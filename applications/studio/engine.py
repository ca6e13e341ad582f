"""The studio's state and work: the template, the current label, previews and exports.

Every computation goes through ``applications.propagation`` (the functions
``applications.propagate_to_images`` uses), so the page shows exactly what
the command line would write. One lock serialises use of the model and the
dataset; the template (average congealed image) of each cluster is computed
once in a background thread, with progress readable meanwhile, and cached in
a PNG file.
"""
import argparse
import base64
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

from applications import cluster_policy
from applications.propagation import Label, congeal, label_from_rgba, option_problems, propagate, splat_label
from models.gangealing import CongealedMean
from utils.colour_scales import scale_for_cluster
from utils.atomic_io import atomic_write
from utils.errors import UserError
from utils.image_io import (UntrustedImageError, array_to_tensor, decode_untrusted_image, encode_image,
                            read_image_file, resize_array, tensor_to_uint8)

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # labels and objects are small PNGs; more is refused unread
MAX_UPLOAD_SIDE = 4096  # pixels per side of an uploaded label or object
MAX_PREVIEW_IMAGES = 64
PREVIEW_SIDE = 256  # preview images larger than this are shrunk before they are sent
CONGEAL_CACHE = 64  # images whose alignment is kept between previews
SELECTION_MODES = ('first', 'random', 'indices')
EXPORT_NAME = re.compile(r'^propagated-[0-9]{8}-[0-9]{6}-[0-9]{3}\.zip$')
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
        self._congeal_cache = {}  # (index, cluster) -> (image, input, mirrored, congealed), oldest first
        if opt.label_path is not None:
            self.set_label(self._read_start_label(opt.label_path))

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
            'command': ['python', '-m', 'applications.propagate_to_images', '--ckpt', str(opt.ckpt),
                        '--real_data_path', str(opt.real_data_path), '--real_size', str(opt.real_size),
                        '--dataset_mode', str(opt.dataset_mode), '--resolution', str(opt.resolution)],
        }

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

    def average_cache_path(self, cluster):
        """Where the average of ``cluster`` is cached: beside an LMDB dataset (a folder no image
        listing reads), otherwise in the output folder; the name encodes what it depends on."""
        opt = self.opt
        key = json.dumps([_file_fingerprint(opt.ckpt), os.path.realpath(opt.real_data_path), opt.dataset_mode,
                          opt.real_size, opt.output_resolution, self.average_count(), cluster, opt.padding_mode,
                          opt.iters, bool(opt.no_flip_inference)])
        digest = hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]
        folder = os.path.join(opt.out, AVERAGES_FOLDER)
        if opt.dataset_mode == 'lmdb' and os.access(opt.real_data_path, os.W_OK):
            folder = os.path.join(opt.real_data_path, AVERAGES_FOLDER)
        return os.path.join(folder, f'average-{digest}-cluster{cluster}.png')

    def average_status(self, cluster):
        """{'cluster', 'state': 'waiting'|'computing'|'ready'|'failed', 'done', 'total', 'error'}."""
        with self.state_lock:
            record = dict(self.averages.get(cluster) or {'state': 'waiting', 'done': 0, 'total': 0, 'error': None})
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
        with self.model_lock:
            for images in loader:
                mean.add(congeal(self.t, opt, images.to(self.device))[3])
                self._progress(cluster, int(mean.counts.sum().item()))
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

    def set_label(self, data):
        """Take an uploaded label (encoded image bytes).

        An image without transparency is a mask (white is the label) and is
        stored as RGBA with that mask as alpha, which the command line reads
        the same way. Returns {'width', 'height', 'pixels'}. Raises RequestError.
        """
        rgba = self.decode_upload(data, 'label')
        with self.model_lock:
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
        with self.model_lock:
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

    def _congealed(self, opt, indices):
        """(images, inputs, mirrored, congealed) of ``indices`` for ``opt.cluster``; needs model_lock.

        The flip decision and the alignment do not depend on the label, so they
        are kept for the last CONGEAL_CACHE images: a new stroke on the same
        images costs only the propagation.
        """
        missing = [i for i in indices if (i, opt.cluster) not in self._congeal_cache]
        if missing:
            images = torch.stack([self.dataset[i] for i in missing]).to(self.device)
            inputs, mirrored, _, congealed = congeal(self.t, opt, images)
            for k, index in enumerate(missing):
                self._congeal_cache[(index, opt.cluster)] = (images[k], inputs[k], mirrored[k], congealed[k])
        parts = [self._congeal_cache[(i, opt.cluster)] for i in indices]
        for key in indices:  # most recently used last
            self._congeal_cache[(key, opt.cluster)] = self._congeal_cache.pop((key, opt.cluster))
        while len(self._congeal_cache) > max(CONGEAL_CACHE, len(indices)):
            self._congeal_cache.pop(next(iter(self._congeal_cache)))
        return tuple(torch.stack(column) for column in zip(*parts))

    def _propagate_batches(self, opt, indices, label, cache=True):
        """Yield (indices, images, congealed, propagated) in batches of ``opt.batch``; needs model_lock."""
        for start in range(0, len(indices), opt.batch):
            chunk = indices[start:start + opt.batch]
            if cache:
                images, inputs, mirrored, congealed = self._congealed(opt, chunk)
                policy = cluster_policy(opt, len(chunk), self.device)
            else:
                images = torch.stack([self.dataset[i] for i in chunk]).to(self.device)
                inputs, mirrored, policy, congealed = congeal(self.t, opt, images)
            propagated = propagate(self.t, opt, images, inputs, mirrored, policy, label, opt.blend_alg)
            yield chunk, images, congealed, propagated

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
        with self.model_lock:
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
        stamp = time.strftime('%Y%m%d-%H%M%S') + f'-{int(time.time() * 1000) % 1000:03d}'
        name = f'propagated-{stamp}.zip'
        width = max(5, len(str(len(self.dataset) - 1)))
        with self.model_lock:
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
        with self.model_lock:
            atomic_write(os.path.join(self.opt.out, name), write)
        return {'name': name, 'url': f'/api/download/{name}', 'count': len(indices),
                'seconds': round(time.perf_counter() - start, 3)}

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
