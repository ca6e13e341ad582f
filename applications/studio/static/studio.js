// The edit studio page: draw a label on the template, send it to the server,
// show the propagated previews. Plain JavaScript, no external assets.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  size: 0,              // template pixels per side (the label canvas's size)
  cluster: 0,
  undo: [],
  stroke: null,         // {last: [x, y]} while painting
  object: null,         // {img, x, y, scale} while an object is being placed
  drag: null,           // {dx, dy} while the object is being moved
  busy: false,
};
const UNDO_LIMIT = 50;
const labelCanvas = $('label');
const strokeCanvas = $('stroke');
const overlay = $('overlay');
const labelCtx = labelCanvas.getContext('2d', {willReadFrequently: true});
const strokeCtx = strokeCanvas.getContext('2d');
const overlayCtx = overlay.getContext('2d');

function showMessage(text, kind) {
  const box = $('message');
  box.textContent = text;
  box.className = kind === 'info' ? 'info' : '';
  box.hidden = !text;
}

function setStatus(text) { $('status').textContent = text; }

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Error('the studio server cannot be reached: is it still running?');
  }
  if (!response.ok) throw new Error(await errorText(response));
  return response;
}

function radio(name) { return document.querySelector(`input[name="${name}"]:checked`).value; }

// ------------------------------------------------------------------ drawing

function pushUndo() {
  state.undo.push(labelCtx.getImageData(0, 0, state.size, state.size));
  if (state.undo.length > UNDO_LIMIT) state.undo.shift();
}

function canvasPoint(event) {
  const rect = overlay.getBoundingClientRect();
  return [(event.clientX - rect.left) / rect.width * state.size,
          (event.clientY - rect.top) / rect.height * state.size];
}

function brush() {
  return {size: Number($('brush-size').value), colour: $('brush-colour').value,
          opacity: Number($('brush-opacity').value), eraser: radio('tool') === 'eraser'};
}

function paintSegment(ctx, from, to, b) {
  ctx.save();
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.lineWidth = b.size;
  ctx.strokeStyle = b.colour;
  ctx.fillStyle = b.colour;
  if (b.eraser) ctx.globalCompositeOperation = 'destination-out';
  if (from[0] === to[0] && from[1] === to[1]) {
    ctx.beginPath();
    ctx.arc(to[0], to[1], b.size / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
  }
  ctx.restore();
}

function objectBox(object) {
  const w = object.img.naturalWidth * object.scale;
  const h = object.img.naturalHeight * object.scale;
  return {left: object.x - w / 2, top: object.y - h / 2, w, h};
}

function drawOverlay() {
  overlayCtx.clearRect(0, 0, state.size, state.size);
  if (!state.object) return;
  const box = objectBox(state.object);
  overlayCtx.drawImage(state.object.img, box.left, box.top, box.w, box.h);
  overlayCtx.save();
  overlayCtx.setLineDash([2, 2]);
  overlayCtx.lineWidth = Math.max(1, state.size / 256);
  overlayCtx.strokeStyle = '#00e5ff';
  overlayCtx.strokeRect(box.left, box.top, box.w, box.h);
  overlayCtx.restore();
}

function insideObject(point) {
  if (!state.object) return false;
  const box = objectBox(state.object);
  return point[0] >= box.left && point[0] <= box.left + box.w && point[1] >= box.top && point[1] <= box.top + box.h;
}

overlay.addEventListener('pointerdown', (event) => {
  if (!state.size || event.button !== 0) return;
  event.preventDefault();
  overlay.setPointerCapture(event.pointerId);
  const point = canvasPoint(event);
  if (insideObject(point)) {
    state.drag = {dx: point[0] - state.object.x, dy: point[1] - state.object.y};
    return;
  }
  pushUndo();
  const b = brush();
  state.stroke = {last: point, brush: b};
  strokeCanvas.style.opacity = b.eraser ? '1' : String(b.opacity);
  paintSegment(b.eraser ? labelCtx : strokeCtx, point, point, b);
});

overlay.addEventListener('pointermove', (event) => {
  const point = canvasPoint(event);
  if (state.drag) {
    state.object.x = point[0] - state.drag.dx;
    state.object.y = point[1] - state.drag.dy;
    drawOverlay();
  } else if (state.stroke) {
    const b = state.stroke.brush;
    paintSegment(b.eraser ? labelCtx : strokeCtx, state.stroke.last, point, b);
    state.stroke.last = point;
  }
});

function endPointer() {
  if (state.stroke && !state.stroke.brush.eraser) {
    // The stroke was drawn opaque on its own layer so overlapping segments do
    // not build up; it joins the label at the brush's opacity.
    labelCtx.save();
    labelCtx.globalAlpha = state.stroke.brush.opacity;
    labelCtx.drawImage(strokeCanvas, 0, 0);
    labelCtx.restore();
    strokeCtx.clearRect(0, 0, state.size, state.size);
  }
  state.stroke = null;
  state.drag = null;
}
overlay.addEventListener('pointerup', endPointer);
overlay.addEventListener('pointercancel', endPointer);

$('undo').addEventListener('click', () => {
  const previous = state.undo.pop();
  if (previous) labelCtx.putImageData(previous, 0, 0);
});
$('clear').addEventListener('click', () => {
  pushUndo();
  labelCtx.clearRect(0, 0, state.size, state.size);
});

for (const [input, output] of [['brush-size', 'brush-size-value'], ['brush-opacity', 'brush-opacity-value'],
                               ['object-scale', 'object-scale-value'], ['sigma', 'sigma-value'],
                               ['opacity', 'opacity-value']]) {
  $(input).addEventListener('input', () => { $(output).textContent = $(input).value; updateCommand(); });
}
$('object-scale').addEventListener('input', () => {
  if (state.object) { state.object.scale = Number($('object-scale').value); drawOverlay(); }
});
for (const input of document.querySelectorAll('input[name="mode"]')) input.addEventListener('change', updateCommand);

// ------------------------------------------------------------------ files

function loadImage(blob) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('the browser could not show the image'));
    img.src = URL.createObjectURL(blob);
  });
}

function labelBlob() {
  return new Promise((resolve) => labelCanvas.toBlob(resolve, 'image/png'));
}

async function sendLabel() {
  const blob = await labelBlob();
  const response = await request('/api/label', {method: 'POST', headers: {'Content-Type': 'image/png'}, body: blob});
  return response.json();
}

$('label-file').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  event.target.value = '';
  if (!file) return;
  try {
    const facts = await (await request('/api/label', {method: 'POST', body: file})).json();
    const img = await loadImage(await (await request('/api/label')).blob());
    pushUndo();
    labelCtx.clearRect(0, 0, state.size, state.size);
    labelCtx.drawImage(img, 0, 0, state.size, state.size);
    showMessage(`Loaded ${file.name}: ${facts.width} x ${facts.height}, ${facts.pixels} label pixels.`, 'info');
  } catch (e) {
    showMessage(`Could not load the label: ${e.message}`);
  }
});

$('label-save').addEventListener('click', async () => {
  try {
    await sendLabel();
    const link = document.createElement('a');
    link.href = '/api/label?download=1';
    link.download = 'label.png';
    document.body.appendChild(link);
    link.click();
    link.remove();
  } catch (e) {
    showMessage(`Could not save the label: ${e.message}`);
  }
});

$('object-file').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  event.target.value = '';
  if (!file) return;
  try {
    const img = await loadImage(await (await request('/api/object', {method: 'POST', body: file})).blob());
    const scale = Math.min(1, state.size / Math.max(img.naturalWidth, img.naturalHeight));
    state.object = {img, x: state.size / 2, y: state.size / 2, scale};
    $('object-scale').value = String(scale);
    $('object-scale-value').textContent = scale.toFixed(2);
    $('object-place').disabled = false;
    document.querySelector('input[name="mode"][value="object"]').checked = true;
    updateCommand();
    drawOverlay();
    showMessage('Drag the object into place, set its scale, then place it.', 'info');
  } catch (e) {
    showMessage(`Could not use the object: ${e.message}`);
  }
});

$('object-place').addEventListener('click', () => {
  if (!state.object) return;
  pushUndo();
  const box = objectBox(state.object);
  labelCtx.drawImage(state.object.img, box.left, box.top, box.w, box.h);
  state.object = null;
  $('object-place').disabled = true;
  drawOverlay();
});

// ------------------------------------------------------------------ propagation

function params() {
  const mode = radio('selection');
  const selection = {mode, count: Number($('count').value), seed: Number($('seed').value)};
  if (mode === 'indices') selection.indices = $('indices').value;
  return {selection, sigma: Number($('sigma').value), opacity: Number($('opacity').value),
          objects: radio('mode') === 'object', cluster: state.cluster};
}

function updateCommand() {
  if (!state.info) return;
  const p = params();
  const parts = state.info.command.concat(['--label_path', 'label.png', '--sigma', String(p.sigma),
                                           '--opacity', String(p.opacity)]);
  if (p.objects) parts.push('--objects');
  if (state.info.clusters > 1) parts.push('--cluster', String(state.cluster));
  $('command').textContent = parts.join(' ');
}

function figure(item) {
  const fig = document.createElement('figure');
  fig.className = 'item';
  fig.dataset.index = String(item.index);
  const row = document.createElement('div');
  row.className = 'row';
  for (const kind of ['original', 'congealed', 'propagated']) {
    const img = document.createElement('img');
    img.className = kind;
    img.alt = `${kind} ${item.index}`;
    img.src = item[kind];
    row.appendChild(img);
  }
  const caption = document.createElement('figcaption');
  caption.textContent = `#${item.index}: original, congealed, edited`;
  fig.append(row, caption);
  return fig;
}

const BUSY_BUTTONS = ['propagate', 'export'];

async function busy(label, work) {
  if (state.busy) return;
  state.busy = true;
  for (const id of BUSY_BUTTONS) $(id).disabled = true;
  setStatus(label);
  try {
    await work();
    showMessage('');
  } catch (e) {
    showMessage(e.message);
  } finally {
    state.busy = false;
    for (const id of BUSY_BUTTONS) $(id).disabled = false;
    setStatus('Ready');
  }
}

$('propagate').addEventListener('click', () => busy('Propagating...', async () => {
  await sendLabel();
  const started = performance.now();
  const response = await request('/api/preview', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                  body: JSON.stringify(params())});
  const result = await response.json();
  const grid = $('grid');
  grid.replaceChildren(...result.items.map(figure));
  $('annotated').src = result.annotated_template;
  $('annotated-figure').hidden = false;
  const total = ((performance.now() - started) / 1000).toFixed(1);
  $('timing').textContent = `${result.items.length} images: ${result.seconds.toFixed(1)} s on the server, ${total} s in all`;
  document.body.dataset.previews = String(Number(document.body.dataset.previews || 0) + 1);
}));

$('export').addEventListener('click', () => busy('Exporting...', async () => {
  await sendLabel();
  const body = Object.assign(params(), {all: $('export-all').checked});
  const result = await (await request('/api/export', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                      body: JSON.stringify(body)})).json();
  const link = $('download');
  link.href = result.url;
  link.download = result.name;
  link.textContent = `download ${result.name} (${result.count} images)`;
  link.hidden = false;
}));

// The whole video with the edit, written by the server in the background: start it, then
// show its progress until the mp4 is ready to download. Previews stay usable meanwhile.
async function followVideoExport(job) {
  const button = $('export-video');
  const progress = $('video-progress');
  button.disabled = true;
  progress.hidden = false;
  try {
    while (job.state === 'running') {
      progress.textContent = `video: ${job.done} / ${job.total} frames`;
      await sleep(500);
      job = await (await request('/api/export_video')).json();
    }
    if (job.state !== 'done') {
      progress.textContent = 'video export failed';
      showMessage(`The video export failed: ${job.error}`);
      return;
    }
    progress.textContent = `video: ${job.done} frames in ${job.seconds.toFixed(1)} s`;
    const link = $('download-video');
    link.href = job.url;
    link.download = job.name;
    link.textContent = `download ${job.name} (${job.done} frames)`;
    link.hidden = false;
    document.body.dataset.videoExports = String(Number(document.body.dataset.videoExports || 0) + 1);
  } finally {
    button.disabled = false;
  }
}

$('export-video').addEventListener('click', async () => {
  if ($('export-video').disabled) return;
  $('export-video').disabled = true;
  $('download-video').hidden = true;
  try {
    await sendLabel();
    const job = await (await request('/api/export_video', {method: 'POST',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify(params())})).json();
    showMessage('');
    await followVideoExport(job);
  } catch (e) {
    showMessage(e.message);
  } finally {
    $('export-video').disabled = false;
  }
});

// ------------------------------------------------------------------ template

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

async function loadTemplate(cluster) {
  document.body.dataset.templateReady = '0';
  for (;;) {
    const response = await request(`/api/template?cluster=${cluster}`);
    if (response.status === 200) {
      const img = $('template');
      img.src = URL.createObjectURL(await response.blob());
      await img.decode();
      break;
    }
    const progress = await response.json();
    setStatus(`Computing the template of cluster ${cluster}: ${progress.done} / ${progress.total} images`);
    await sleep(500);
  }
  setStatus('Ready');
  document.body.dataset.templateReady = '1';
  showKeptWarps(cluster).catch(() => {});  // only an indicator: a failed poll just stops it
}

// Images whose alignment the server keeps (previews of them are splat-only); it aligns the
// first ones in the background after reading a template from a file.
async function showKeptWarps(cluster) {
  const element = $('warps');
  for (;;) {
    if (state.cluster !== cluster) return;
    const progress = await (await request(`/api/status?cluster=${cluster}`)).json();
    element.hidden = progress.keep === 0;
    element.textContent = progress.kept < progress.keep
      ? `aligning images for fast previews: ${progress.kept} / ${progress.keep}`
      : `${progress.kept} images aligned: their previews are fast`;
    document.body.dataset.keptWarps = String(progress.kept);
    if (progress.kept >= progress.keep || progress.state !== 'ready') return;
    await sleep(1000);
  }
}

$('cluster').addEventListener('change', async () => {
  state.cluster = Number($('cluster').value);
  updateCommand();
  try { await loadTemplate(state.cluster); } catch (e) { showMessage(e.message); }
});

async function start() {
  try {
    state.info = await (await request('/api/info')).json();
    const info = state.info;
    state.size = info.template_size;
    state.cluster = info.cluster;
    for (const canvas of [labelCanvas, strokeCanvas, overlay]) {
      canvas.width = state.size;
      canvas.height = state.size;
    }
    $('sigma').value = String(info.sigma);
    $('sigma-value').textContent = String(info.sigma);
    $('opacity').value = String(info.opacity);
    $('opacity-value').textContent = String(info.opacity);
    $('count').max = String(info.max_preview);
    $('count').value = String(Math.min(16, info.num_images, info.max_preview));
    if (info.objects) document.querySelector('input[name="mode"][value="object"]').checked = true;
    if (info.indices) {
      $('indices').value = info.indices.join(', ');
      document.querySelector('input[name="selection"][value="indices"]').checked = true;
    }
    if (info.clusters > 1) {
      const select = $('cluster');
      for (let k = 0; k < info.clusters; k++) select.add(new Option(`cluster ${k}`, String(k)));
      select.value = String(state.cluster);
      $('cluster-tools').hidden = false;
    }
    if (info.video) {
      const v = info.video;
      $('export-video').hidden = false;
      $('video-facts').hidden = false;
      const rate = v.fps ? `${v.fps} frames/s` : `frame rate unknown (exported at ${v.export_fps})`;
      $('video-facts').textContent = `Video: ${v.frames} frames of ${v.width} x ${v.height}, ${rate}; ` +
        'the image numbers are frame numbers.';
    }
    updateCommand();
    if (info.video) {  // an export started before the page was (re)loaded: follow it
      const job = await (await request('/api/export_video')).json();
      if (job.state === 'running') followVideoExport(job).catch((e) => showMessage(e.message));
    }
    await loadTemplate(state.cluster);
    if (info.has_label) {
      const img = await loadImage(await (await request('/api/label')).blob());
      labelCtx.drawImage(img, 0, 0, state.size, state.size);
    }
  } catch (e) {
    showMessage(e.message);
    setStatus('Error');
  }
}

start();
