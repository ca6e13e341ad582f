"""Drawing faces: soft signed-distance shapes composited over a background.

Back to front: the background (laid out in the face's frame, or with the
photo world's scene factor the camera-frame scene of synthetic_world.photo),
the face, its shading, the occluders, then the picture's lighting.

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
from synthetic_world.photo import draw_occluders, draw_scene, light_image, shade_object
from synthetic_world.shapes import (coverage, sd_circle, sd_ellipse, sd_rounded_box, sd_segments,
                                    sd_triangle)

_DISTRACTOR_TINTS = ((0.9, 0.35, -0.2), (-0.25, 0.55, 0.9), (0.75, 0.75, 0.75))


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
            sd = sd_circle(bx, by, cx, cy, r)
        elif k == 1:
            sd = sd_rounded_box(bx, by, cx, cy, r, 0.5, 0.3 * r)
        else:
            sd = sd_circle(bx, by, cx, cy, r).abs() - 0.25 * r  # a ring
        alpha = coverage(sd * sharp) * _b(params['distractor_opacity'][:, k])
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
        return coverage(sd * sharp)

    mode = params.get('mode')
    moded = mode is not None and bool((mode != 0).any())  # a world of several modes (else the cat alone)
    lay = face_layout(params['shape'], mode)
    colors = params['colors']
    fur, marking, light, iris, nose_color, stripe_color, dark = (colors[:, i] for i in range(len(COLOR_NAMES)))
    white = torch.full_like(fur, 0.95)

    # Ears: outer (fur) and inner (light) triangles; the head hides their bases.
    ear = [(_b(ex_), _b(ey_)) for ex_, ey_ in lay['ear']]
    ears = cover(sd_triangle(ax, y, *ear))
    # Droopy-eared heads (mode 1) have ears in the marking colour, which contrasts with the fur.
    image = _paint(image, ears, torch.where((mode == 1)[:, None], marking, fur) if moded else fur)
    # Inner ear: the outer triangle shrunk towards a point between its centroid and its base.
    anchor = [(ear[0][i] + ear[1][i] + ear[2][i]) / 6 + (ear[0][i] + ear[1][i]) / 4 for i in (0, 1)]
    inner = [tuple(anchor[i] + 0.6 * (v[i] - anchor[i]) for i in (0, 1)) for v in ear]
    image = _paint(image, cover(sd_triangle(ax, y, *inner)), light)

    hx, hy = _b(lay['hx']), _b(lay['hy'])
    rx, ry = (_b(r) for r in lay['head_radii'])
    head = cover(sd_ellipse(x, y, 0.0, HEAD_CENTRE_Y, rx, ry))
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
    patch = sd_ellipse(mx * mc + my * ms, my * mc - mx * ms, 0.0, 0.0, 0.24 * hx, 0.19 * hy)
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
    image = _paint(image, cover(sd_ellipse(ax, y, 0.1 * hx, nose_y + 0.13, 0.16, 0.12)), light)

    # Eyes: dark rim, iris, pupils (following the gaze), highlights.
    ex, ey = (_b(v) for v in lay['eye'])
    es = _b(lay['eye_size'])
    image = _paint(image, cover(sd_ellipse(ax, y, ex, ey, 0.13 * es + 0.022, 0.10 * es + 0.022)), dark)
    image = _paint(image, cover(sd_ellipse(ax, y, ex, ey, 0.13 * es, 0.10 * es)), iris)
    gx, gy = _b(params['gaze'][:, 0]) * 0.05 * es, _b(params['gaze'][:, 1]) * 0.02 * es
    pupils = torch.minimum(sd_ellipse(x, y, gx - ex, ey + gy, 0.045 * es, 0.085 * es),
                           sd_ellipse(x, y, gx + ex, ey + gy, 0.045 * es, 0.085 * es))
    image = _paint(image, cover(pupils), dark)
    image = _paint(image, cover(sd_circle(ax, y, ex + 0.025 * es, ey - 0.035 * es, 0.022 * es)), white)

    # Nose: a downward triangle.
    w, h = _b(lay['nose_half_width']), _b(lay['nose_height'])
    nose = sd_triangle(x, y, (nose_x - w, nose_y - h / 2), (nose_x + w, nose_y - h / 2), (nose_x, nose_y + h / 2))
    image = _paint(image, cover(nose), nose_color)

    # Mouth and whiskers: dark strokes.
    top_y, bottom_y = _b(lay['mouth_top_y']), _b(lay['nose_bottom_y'])
    mid = tuple(_b(v) for v in lay['mouth_mid'])
    corner = tuple(_b(v) for v in lay['mouth_corner'])
    zero = torch.zeros_like(top_y)
    mouth = sd_segments(ax, y, [(zero, bottom_y, zero, top_y), (zero, top_y, *mid), (*mid, *corner)], 0.016)
    whiskers = sd_segments(ax, y, [(0.24 * hx, nose_y + 0.12, 0.72 * hx, nose_y + 0.04),
                                    (0.24 * hx, nose_y + 0.16, 0.74 * hx, nose_y + 0.20)], 0.009)
    image = _paint(image, cover(torch.minimum(mouth, whiskers)), dark)
    return image, fur_area


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
        if 'scene_colors' in part:  # the photo world's scene, in the camera's frame
            image = draw_scene(part, px, py, -size / (2 * edge_softness))
        else:
            image = _draw_background(part, size, x, y)
        image, face_alpha = _draw_face(image, part, size, x, y, edge_softness)
        if 'lighting' in part:
            image = shade_object(image, part, x, y, face_alpha)
        if 'occluders' in part:
            image = draw_occluders(image, part, px, py, -size / (2 * edge_softness))
        if 'lighting' in part:
            image = light_image(image, part)
        images.append(image.clamp(-1, 1))
    if not images:
        images = [torch.zeros(0, 3, size, size, device=device, dtype=dtype)]
    return torch.cat(images), keypoints_from_params(params, size)
