"""Drawing faces: soft signed-distance shapes composited over a scene background.

A pixel's coverage of a part is ``sigmoid(-distance / softness)``, which
anti-aliases edges and makes the image differentiable with respect to every
continuous parameter.
"""
import math

import torch
import torch.nn.functional as F

from utils.errors import UserError
from synthetic_world.deformation import deform
from synthetic_world.factors import BACKGROUND_FRAME_SCALE, COLOR_NAMES, MAX_DISTRACTORS, slice_params
from synthetic_world.keypoints import HEAD_CENTRE_Y, face_layout, keypoints_from_params

_DISTRACTOR_TINTS = ((0.9, 0.35, -0.2), (-0.25, 0.55, 0.9), (0.75, 0.75, 0.75))


# Signed distances (negative inside). Arguments broadcast against the pixel
# tensors (N, S, S); per-image values come as (N, 1, 1).

def _sd_circle(x, y, cx, cy, r):
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2 + 1e-12) - r


def _sd_ellipse(x, y, cx, cy, rx, ry):
    # First-order distance to the ellipse: f / |grad f| with f = |q / r|^2 - 1.
    # Exact on the boundary, -> -inf at the centre, smooth everywhere.
    dx, dy = (x - cx) / rx, (y - cy) / ry
    f = dx * dx + dy * dy - 1
    grad = 2 * torch.sqrt((dx / rx) ** 2 + (dy / ry) ** 2 + 1e-12)
    return f / grad


def _sq_segment(x, y, ax, ay, bx, by):
    # Squared distance to the segment a-b.
    ex, ey = bx - ax, by - ay
    wx, wy = x - ax, y - ay
    h = ((wx * ex + wy * ey) / (ex * ex + ey * ey + 1e-12)).clamp(0, 1)
    return (wx - ex * h) ** 2 + (wy - ey * h) ** 2


def _sd_segments(x, y, segments, radius):
    # Union of round-capped strokes of half-width ``radius`` along the segments.
    sq = _sq_segment(x, y, *segments[0])
    for segment in segments[1:]:
        sq = torch.minimum(sq, _sq_segment(x, y, *segment))
    return torch.sqrt(sq + 1e-12) - radius


def _sd_triangle(x, y, a, b, c):
    # Exact distance to the triangle's edges, negative inside (either winding).
    sq = torch.minimum(torch.minimum(_sq_segment(x, y, *a, *b), _sq_segment(x, y, *b, *c)),
                       _sq_segment(x, y, *c, *a))
    c0, c1, c2 = ((q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]) for p, q in ((a, b), (b, c), (c, a)))
    inside = ((c0 * c1) >= 0) & ((c1 * c2) >= 0)
    dist = torch.sqrt(sq + 1e-12)
    return torch.where(inside, -dist, dist)


def _sd_rounded_box(x, y, cx, cy, half, angle, rounding):
    c, s = math.cos(angle), math.sin(angle)
    lx, ly = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    qx, qy = lx.abs() - (half - rounding), ly.abs() - (half - rounding)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2 + 1e-12)
    return outside + torch.maximum(qx, qy).clamp(max=0) - rounding


def _coverage(scaled_distance):
    # sigmoid(-d / ramp). The argument is clamped so that coverage far from an
    # edge stays a normal float: products of subnormal floats are ~100x slower
    # on CPUs, in the forward and even more in the backward pass.
    return torch.sigmoid(scaled_distance.clamp(-20, 20))


def _b(t):
    # (N,) -> (N, 1, 1) for broadcasting against pixel tensors.
    return t[:, None, None]


def _paint(image, alpha, color):
    # Composite ``color`` (N, 3) with coverage ``alpha`` (N, S, S) over ``image``.
    return torch.lerp(image, color[:, :, None, None].expand_as(image), alpha[:, None])


def _object_coordinates(params, px, py):
    """Pixel centres (normalised image coordinates (N, S, S)) in object coordinates (inverse pose)."""
    scale, rot = params['scale'], params['rotation']
    c, s = _b(torch.cos(rot) / scale), _b(torch.sin(rot) / scale)
    dx, dy = px - _b(2 * params['translation'][:, 0]), py - _b(2 * params['translation'][:, 1])
    return (c * dx + s * dy) * _b(1 - 2 * params['mirror']), c * dy - s * dx


def _draw_background(params, size, x, y):
    # The background is attached to the scene: it is laid out in the face's
    # frame (object coordinates x, y, times BACKGROUND_FRAME_SCALE), so a pose
    # moves face and background together, as a camera moving around a fixed
    # scene would. For the mean-sized, centred, upright face these are image
    # coordinates. (Laid out on the canvas instead, every background carries
    # a rotation cue unrelated to the face's pose: measured, it kept the
    # transformer from learning rotation.)
    n = x.shape[0]
    bx, by = BACKGROUND_FRAME_SCALE * x, BACKGROUND_FRAME_SCALE * y
    angle = _b(params['background_angle'])
    # Position along the gradient direction: 0 .. 1 across the canonical canvas, held beyond it.
    t = ((bx * torch.cos(angle) + by * torch.sin(angle)) * (0.5 / math.sqrt(2)) + 0.5).clamp(0, 1)
    c0, c1 = params['background'][:, 0], params['background'][:, 1]
    image = c0[:, :, None, None] + t[:, None] * (c1 - c0)[:, :, None, None]
    noise = F.grid_sample(params['background_noise'], torch.stack([bx, by], dim=-1), mode='bicubic',
                          padding_mode='reflection', align_corners=False)
    image = image + params['background_noise_strength'][:, None, None, None] * noise
    # Distractors: ramp of 0.25 px; a pixel is 2 / size image units, 2 * BACKGROUND_FRAME_SCALE / (size * scale)
    # background units.
    sharp = _b(-params['scale'] * size / (0.5 * BACKGROUND_FRAME_SCALE))
    tints = torch.tensor(_DISTRACTOR_TINTS, dtype=x.dtype, device=x.device)
    d = params['distractors']
    for k in range(MAX_DISTRACTORS):
        if not bool((params['distractor_opacity'][:, k] > 0).any()):
            continue
        cx, cy, r, shade = _b(d[:, k, 0]), _b(d[:, k, 1]), _b(d[:, k, 2]), d[:, k, 3]
        if k == 0:
            sd = _sd_circle(bx, by, cx, cy, r)
        elif k == 1:
            sd = _sd_rounded_box(bx, by, cx, cy, r, 0.5, 0.3 * r)
        else:
            sd = _sd_circle(bx, by, cx, cy, r).abs() - 0.25 * r  # a ring
        alpha = _coverage(sd * sharp) * _b(params['distractor_opacity'][:, k])
        color = (2 * shade[:, None] - 1) * tints[k].expand(n, 3)
        image = _paint(image, alpha, color)
    return image


def _draw_face(image, params, size, x, y, edge_softness):
    # x, y: pixel centres in object coordinates (_object_coordinates).
    scale = params['scale']
    ax = x.abs()  # symmetric parts are drawn once, on the right, with |x|
    # Coverage = sigmoid(-distance / ramp): object distances scale by `scale` in
    # normalised units, where a pixel is 2 / size wide.
    sharp = _b(-scale * size / (2 * edge_softness))

    def cover(sd):
        return _coverage(sd * sharp)

    mode = params.get('mode')
    moded = mode is not None and bool((mode != 0).any())  # a world of several modes (else the cat alone)
    lay = face_layout(params['shape'], mode)
    colors = params['colors']
    fur, marking, light, iris, nose_color, stripe_color, dark = (colors[:, i] for i in range(len(COLOR_NAMES)))
    white = torch.full_like(fur, 0.95)

    # Ears: outer (fur) and inner (light) triangles; the head hides their bases.
    ear = [(_b(ex_), _b(ey_)) for ex_, ey_ in lay['ear']]
    ears = cover(_sd_triangle(ax, y, *ear))
    # Droopy-eared heads (mode 1) have ears in the marking colour, which contrasts with the fur.
    image = _paint(image, ears, torch.where((mode == 1)[:, None], marking, fur) if moded else fur)
    # Inner ear: the outer triangle shrunk towards a point between its centroid and its base.
    anchor = [(ear[0][i] + ear[1][i] + ear[2][i]) / 6 + (ear[0][i] + ear[1][i]) / 4 for i in (0, 1)]
    inner = [tuple(anchor[i] + 0.6 * (v[i] - anchor[i]) for i in (0, 1)) for v in ear]
    image = _paint(image, cover(_sd_triangle(ax, y, *inner)), light)

    hx, hy = _b(lay['hx']), _b(lay['hy'])
    rx, ry = (_b(r) for r in lay['head_radii'])
    head = cover(_sd_ellipse(x, y, 0.0, HEAD_CENTRE_Y, rx, ry))
    image = _paint(image, head, fur)

    # Fur texture: noise attached to the object, over head and ears.
    fur_texture = F.grid_sample(params['fur_noise'], torch.stack([x, y], dim=-1), mode='bilinear',
                                padding_mode='border', align_corners=False)
    fur_area = 1 - (1 - head) * (1 - ears)
    image = image + (_b(params['fur_noise_strength']) * fur_area)[:, None] * fur_texture

    # Stripes over the head: a sine wave whose zero crossings are the stripe edges.
    freq, angle, phase, strength = (_b(params['stripes'][:, i]) for i in range(4))
    omega = 2 * math.pi * freq
    wave = torch.sin(omega * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
    image = _paint(image, cover(wave / -omega) * head * strength, stripe_color)

    # The asymmetric marking: a patch over the image-left eye (of an unmirrored face).
    mc, ms = math.cos(0.35), math.sin(0.35)
    mx, my = x + 0.30 * hx, y - (HEAD_CENTRE_Y - 0.30 * hy)
    patch = _sd_ellipse(mx * mc + my * ms, my * mc - mx * ms, 0.0, 0.0, 0.24 * hx, 0.19 * hy)
    image = _paint(image, cover(patch) * head, marking)
    if moded:
        # Each head type has its own large colour pattern, which no warp of another type can make:
        # droopy heads a mask across the eyes (marking colour), sideways-eared heads a light lower face.
        eye_y = _b(lay['eye'][1])
        band = cover((y - eye_y).abs() - 0.17 * hy) * head * _b((mode == 1).to(x.dtype))
        image = _paint(image, band, marking)
        lower = cover(_b(lay['nose'][1]) - 0.08 - y) * head * _b((mode == 2).to(x.dtype))
        image = _paint(image, lower, light)

    # Muzzle: two light lobes beside the nose.
    nose_x, nose_y = (_b(v) for v in lay['nose'])
    image = _paint(image, cover(_sd_ellipse(ax, y, 0.1 * hx, nose_y + 0.13, 0.16, 0.12)), light)

    # Eyes: dark rim, iris, pupils (following the gaze), highlights.
    ex, ey = (_b(v) for v in lay['eye'])
    es = _b(lay['eye_size'])
    image = _paint(image, cover(_sd_ellipse(ax, y, ex, ey, 0.13 * es + 0.022, 0.10 * es + 0.022)), dark)
    image = _paint(image, cover(_sd_ellipse(ax, y, ex, ey, 0.13 * es, 0.10 * es)), iris)
    gx, gy = _b(params['gaze'][:, 0]) * 0.05 * es, _b(params['gaze'][:, 1]) * 0.02 * es
    pupils = torch.minimum(_sd_ellipse(x, y, gx - ex, ey + gy, 0.045 * es, 0.085 * es),
                           _sd_ellipse(x, y, gx + ex, ey + gy, 0.045 * es, 0.085 * es))
    image = _paint(image, cover(pupils), dark)
    image = _paint(image, cover(_sd_circle(ax, y, ex + 0.025 * es, ey - 0.035 * es, 0.022 * es)), white)

    # Nose: a downward triangle.
    w, h = _b(lay['nose_half_width']), _b(lay['nose_height'])
    nose = _sd_triangle(x, y, (nose_x - w, nose_y - h / 2), (nose_x + w, nose_y - h / 2), (nose_x, nose_y + h / 2))
    image = _paint(image, cover(nose), nose_color)

    # Mouth and whiskers: dark strokes.
    top_y, bottom_y = _b(lay['mouth_top_y']), _b(lay['nose_bottom_y'])
    mid = tuple(_b(v) for v in lay['mouth_mid'])
    corner = tuple(_b(v) for v in lay['mouth_corner'])
    zero = torch.zeros_like(top_y)
    mouth = _sd_segments(ax, y, [(zero, bottom_y, zero, top_y), (zero, top_y, *mid), (*mid, *corner)], 0.016)
    whiskers = _sd_segments(ax, y, [(0.24 * hx, nose_y + 0.12, 0.72 * hx, nose_y + 0.04),
                                    (0.24 * hx, nose_y + 0.16, 0.74 * hx, nose_y + 0.20)], 0.009)
    image = _paint(image, cover(torch.minimum(mouth, whiskers)), dark)
    return image


# Pixels per rendering chunk: keeps the working set in cache on CPU.
_CHUNK_PIXELS = 1 << 17


def render(params, size, edge_softness=0.25):
    """Draw the faces described by ``params``.

    Args:
        params: dict from sample_params / params_from_factors (any device).
        size: output resolution S (any positive integer).
        edge_softness: width of the anti-aliasing ramp, in pixels.
    Returns:
        images (N, 3, S, S) in [-1, 1], differentiable with respect to the
        continuous parameters, and keypoints (N, NUM_KEYPOINTS, 3) as
        keypoints_from_params.
    """
    if int(size) != size or size < 1:
        raise UserError(f'synthetic world: image size must be a positive integer, got {size}')
    size = int(size)
    scale = params['scale']
    n, device, dtype = scale.shape[0], scale.device, scale.dtype
    coords = (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1
    chunk = n if device.type != 'cpu' else max(1, _CHUNK_PIXELS // (size * size))
    images = []
    for start in range(0, n, chunk):
        part = slice_params(params, slice(start, start + chunk))
        m = part['scale'].shape[0]
        px = coords.view(1, 1, size).expand(m, size, size)
        py = coords.view(1, size, 1).expand(m, size, size)
        x, y = _object_coordinates(part, px, py)
        if bool((part['deformation'] != 0).any()):  # the default world skips it (bit-identical renders)
            x, y = deform(x, y, part['deformation'])
        image = _draw_background(part, size, x, y)
        images.append(_draw_face(image, part, size, x, y, edge_softness).clamp(-1, 1))
    if not images:
        images = [torch.zeros(0, 3, size, size, device=device, dtype=dtype)]
    return torch.cat(images), keypoints_from_params(params, size)
