"""A procedural world of stylised cat faces with exact keypoints (pure torch).

Every image is drawn from a small set of named world parameters (pose, part
shapes, colours, textures, background) by compositing soft signed-distance
shapes: a pixel's coverage of a part is ``sigmoid(-distance / softness)``, which
anti-aliases edges and makes the image differentiable with respect to every
continuous parameter. Keypoints are computed from the same parameters, so they
are exact at any resolution.

Coordinates:
- normalised image coordinates run over [-1, 1] with pixel centres at
  ``(2 i + 1) / S - 1`` (``align_corners=False``, as in ``grid_sample``);
- pixel coordinates are ``(p + 1) * S / 2 - 0.5``, so pixel centres are at
  0 .. S - 1;
- object coordinates: the canonical face fits in the box [-1, 1]^2 (x right,
  y down); a pose maps object point q to image point
  ``2 * translation + scale * R(rotation) @ (mirror_sign * q.x, q.y)``.
- the background is laid out in the face's frame (object coordinates times
  ``BACKGROUND_FRAME_SCALE``), so a pose moves face and background together.

Keypoint names say on which side of the *image* a point lies for an upright
face ("left_eye" is the eye with the smaller x). A mirrored face therefore gets
its keypoints permuted with ``MIRROR_PERMUTATION``, exactly as a horizontally
flipped image would.

The random factors (see ``WorldFactors`` and docs/synthetic_world.md) are drawn
as independent uniforms ``u`` in [0, 1] (``NUM_FACTORS`` of them, grouped in
``FACTOR_GROUPS``) plus two Gaussian noise fields; ``params_from_factors``
turns them into the physical parameters that ``render`` draws. The synthetic
generator produces the same ``u`` from its latents, so its images follow the
same distribution as the rendered "real" data.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError

# ----------------------------------------------------------------------------
# Keypoints

KEYPOINT_NAMES = (
    'left_ear_tip', 'right_ear_tip',
    'left_eye', 'right_eye',
    'nose',
    'left_mouth_corner', 'right_mouth_corner',
    'chin',
    'left_cheek', 'right_cheek',
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
# Index i of a mirrored face holds the mirror image of keypoint MIRROR_PERMUTATION[i].
MIRROR_PERMUTATION = torch.tensor([1, 0, 3, 2, 4, 6, 5, 7, 9, 8], dtype=torch.long)

# ----------------------------------------------------------------------------
# Random factors

# Ordered groups of uniform factors; the synthetic generator reads each group
# from its own W+ entries (pose and shape from the coarse ones).
FACTOR_GROUPS = (
    ('scale', 1),
    ('rotation', 1),
    ('translation', 2),       # x, y
    ('shape', 12),            # SHAPE_NAMES
    ('fur_colors', 9),        # fur, marking, light (muzzle, inner ears)
    ('feature_colors', 12),   # iris, nose, stripes, dark (pupils, lines)
    ('texture', 7),           # stripe frequency, angle, phase, strength; fur noise; gaze x, y
    ('background', 20),       # colour 0, colour 1, angle, noise strength, 3 distractors x (x, y, radius, shade)
    ('mirror', 1),            # the face is mirrored when this factor is below 0.5
)
FACTOR_SLICES = {}
_start = 0
for _name, _width in FACTOR_GROUPS:
    FACTOR_SLICES[_name] = slice(_start, _start + _width)
    _start += _width
NUM_FACTORS = _start
POSE_SHAPE_GROUPS = ('scale', 'rotation', 'translation', 'shape')
APPEARANCE_GROUPS = ('fur_colors', 'feature_colors', 'texture')
# The face's geometry is left/right symmetric, so a mirrored face has the same
# labelled keypoints as its unmirrored twin and differs only in which eye
# carries the marking (and in mirrored textures): mirroring is an appearance
# factor of this world, and the synthetic generator reads it from a fine entry.

FUR_NOISE_SHAPE = (1, 16, 16)         # per image; sampled in object coordinates
BACKGROUND_NOISE_SHAPE = (3, 6, 6)    # per image; upsampled over the canvas
MAX_DISTRACTORS = 3

PARAM_BLOCK = 256  # render_dataset draws parameters in blocks of this many images


@dataclass(frozen=True)
class WorldFactors:
    """Ranges and switches of the random factors.

    rotation: largest |rotation| in degrees (0 switches rotation off).
    scale: (min, max) object size as a fraction of the canvas (equal values
        switch it off).
    translation: largest |shift| per axis as a fraction of the canvas.
    mirror: whether half of the faces are mirrored (rendered ones and the
        synthetic generator's alike).
    shape: largest relative change of part sizes and positions (0 = rigid).
    appearance: random colours, stripes, fur texture and gaze; off gives the
        canonical palette.
    background: gradient, noise and distractors; off gives a flat canvas.
    distractors: how many distractor shapes (0 to 3) the background shows.
    """
    rotation: float = 45.0
    scale: tuple = (0.6, 1.0)
    translation: float = 0.15
    mirror: bool = True
    shape: float = 0.15
    appearance: bool = True
    background: bool = True
    distractors: int = MAX_DISTRACTORS

    def validate(self):
        """Raise UserError naming the first factor outside its allowed range."""
        lo, hi = self.scale
        checks = (
            (0 <= self.rotation <= 180, f'rotation must be in [0, 180] degrees, got {self.rotation}'),
            (0 < lo <= hi <= 2, f'scale must satisfy 0 < min <= max <= 2, got {lo} {hi}'),
            (0 <= self.translation <= 0.5, f'translation must be in [0, 0.5] of the canvas, got {self.translation}'),
            (0 <= self.shape <= 0.5, f'shape must be in [0, 0.5], got {self.shape}'),
            (0 <= self.distractors <= MAX_DISTRACTORS,
             f'distractors must be between 0 and {MAX_DISTRACTORS}, got {self.distractors}'),
        )
        for ok, message in checks:
            if not ok:
                raise UserError(f'synthetic world: {message}')
        return self


# Canonical colours (RGB in [-1, 1]) and how far appearance may move each channel.
_PALETTE = {  # name: (canonical colour, spread)
    'fur': ((0.60, 0.15, -0.35), 0.9),
    'light': ((0.90, 0.80, 0.65), 0.3),
    'iris': ((0.35, 0.70, -0.40), 0.6),
    'nose': ((0.75, -0.05, 0.05), 0.35),
    'stripe': ((0.15, -0.40, -0.75), 0.5),
    'dark': ((-0.85, -0.85, -0.80), 0.15),
}
_BACKGROUND_CANON = ((0.35, 0.45, 0.55), (-0.15, 0.0, 0.20))
_BACKGROUND_SPREAD = 0.8
BACKGROUND_FRAME_SCALE = 0.8  # background units per object unit: the canonical face's background is the canvas
_DISTRACTOR_TINTS = ((0.9, 0.35, -0.2), (-0.25, 0.55, 0.9), (0.75, 0.75, 0.75))
COLOR_NAMES = ('fur', 'marking', 'light', 'iris', 'nose', 'stripe', 'dark')


def _palette_color(name, u):
    canon, spread = _PALETTE[name]
    canon = torch.tensor(canon, dtype=u.dtype, device=u.device)
    return (canon + spread * (2 * u - 1)).clamp(-1, 1)


def params_from_factors(u, fur_noise, background_noise, factors=None):
    """Physical world parameters from uniform factors and noise fields.

    Args:
        u: (N, NUM_FACTORS) in [0, 1], laid out as FACTOR_GROUPS.
        fur_noise: (N, *FUR_NOISE_SHAPE) standard normal.
        background_noise: (N, *BACKGROUND_NOISE_SHAPE) standard normal.
        factors: WorldFactors (defaults if None); switched-off factors take
            their canonical value whatever ``u`` says.
    Returns:
        dict of tensors (all on u's device), N first:
        scale (N,) canvas fraction, rotation (N,) radians, translation (N, 2)
        canvas fraction, mirror (N,), shape (N, 12) relative, colors (N, 7, 3)
        in [-1, 1] (COLOR_NAMES), stripes (N, 4) frequency/angle/phase/strength,
        gaze (N, 2) in [-1, 1], fur_noise_strength (N,), fur_noise,
        background (N, 2, 3), background_angle (N,), background_noise_strength
        (N,), background_noise, distractors (N, 3, 4) x/y/radius/shade and
        distractor_opacity (N, 3). Differentiable with respect to ``u``.
    """
    factors = factors or WorldFactors()
    n = u.shape[0]
    if u.shape != (n, NUM_FACTORS):
        raise UserError(f'synthetic world: factors must have shape (N, {NUM_FACTORS}), got {tuple(u.shape)}')

    def group(name):
        return u[:, FACTOR_SLICES[name]]

    def centred(name, on):
        # A switched-off factor sits at the middle of its range.
        g = group(name)
        return g if on else torch.full_like(g, 0.5)

    lo, hi = factors.scale
    scale = lo + (hi - lo) * group('scale')[:, 0]
    rotation = math.radians(factors.rotation) * (2 * group('rotation')[:, 0] - 1)
    translation = factors.translation * (2 * group('translation') - 1)
    shape = factors.shape * (2 * group('shape') - 1)

    fur_u = centred('fur_colors', factors.appearance).view(n, 3, 3)
    feat_u = centred('feature_colors', factors.appearance).view(n, 4, 3)
    tex_u = centred('texture', factors.appearance)
    fur = _palette_color('fur', fur_u[:, 0])
    # The marking contrasts with the fur: light on dark fur, dark on light fur.
    fur_lum = fur.mean(dim=1, keepdim=True)
    marking = (-0.9 * torch.tanh(4 * fur_lum) + 0.25 * fur + 0.35 * (2 * fur_u[:, 1] - 1)).clamp(-1, 1)
    colors = torch.stack([
        fur, marking, _palette_color('light', fur_u[:, 2]),
        _palette_color('iris', feat_u[:, 0]), _palette_color('nose', feat_u[:, 1]),
        _palette_color('stripe', feat_u[:, 2]), _palette_color('dark', feat_u[:, 3]),
    ], dim=1)
    stripes = torch.stack([
        1.5 + 2.5 * tex_u[:, 0],              # cycles per object unit
        math.pi * (tex_u[:, 1] - 0.5),        # stripe direction, radians
        2 * math.pi * tex_u[:, 2],            # phase
        tex_u[:, 3],                          # opacity
    ], dim=1)
    fur_noise_strength = 0.2 * tex_u[:, 4]
    gaze = 2 * tex_u[:, 5:7] - 1

    bg_u = group('background')
    canon = torch.tensor(_BACKGROUND_CANON, dtype=u.dtype, device=u.device)
    distractors = bg_u[:, 8:20].reshape(n, MAX_DISTRACTORS, 4)
    distractors = torch.stack([
        2 * distractors[..., 0] - 1, 2 * distractors[..., 1] - 1,
        0.08 + 0.22 * distractors[..., 2], distractors[..., 3]], dim=-1)
    opacity = (torch.arange(MAX_DISTRACTORS, device=u.device) < factors.distractors).to(u.dtype)
    if factors.background:
        background = (canon + _BACKGROUND_SPREAD * (2 * bg_u[:, 0:6].view(n, 2, 3) - 1)).clamp(-1, 1)
        background_angle = 2 * math.pi * bg_u[:, 6]
        background_noise_strength = 0.3 * bg_u[:, 7]
        distractor_opacity = opacity.expand(n, MAX_DISTRACTORS).clone()
    else:
        background = canon[:1].expand(n, 2, 3).clone()
        background_angle = torch.zeros(n, dtype=u.dtype, device=u.device)
        background_noise_strength = torch.zeros_like(background_angle)
        distractor_opacity = torch.zeros(n, MAX_DISTRACTORS, dtype=u.dtype, device=u.device)

    mirror = (group('mirror')[:, 0] < 0.5).to(u.dtype) * float(factors.mirror)
    return {
        'scale': scale, 'rotation': rotation, 'translation': translation,
        'mirror': mirror, 'shape': shape, 'colors': colors, 'stripes': stripes,
        'gaze': gaze, 'fur_noise_strength': fur_noise_strength, 'fur_noise': fur_noise,
        'background': background, 'background_angle': background_angle,
        'background_noise_strength': background_noise_strength, 'background_noise': background_noise,
        'distractors': distractors, 'distractor_opacity': distractor_opacity,
    }


def sample_params(n, generator, factors=None):
    """Draw the parameters of ``n`` random faces.

    Args:
        n: number of faces.
        generator: torch.Generator (CPU) that makes the draw deterministic.
        factors: WorldFactors (defaults if None).
    Returns:
        the dict of ``params_from_factors`` (CPU tensors).
    """
    factors = (factors or WorldFactors()).validate()
    u = torch.rand(n, NUM_FACTORS, generator=generator)
    fur_noise = torch.randn(n, *FUR_NOISE_SHAPE, generator=generator)
    background_noise = torch.randn(n, *BACKGROUND_NOISE_SHAPE, generator=generator)
    return params_from_factors(u, fur_noise, background_noise, factors)


def canonical_params(n=1, factors=None, device=None):
    """Parameters of the canonical face: upright, centred, mean scale and shape,
    canonical palette, no mirror, no noise texture. Same dict as sample_params."""
    u = torch.full((n, NUM_FACTORS), 0.5, device=device)
    return params_from_factors(u, torch.zeros(n, *FUR_NOISE_SHAPE, device=device),
                               torch.zeros(n, *BACKGROUND_NOISE_SHAPE, device=device), factors)


def slice_params(params, index):
    """The parameters of the faces picked by ``index`` (slice, LongTensor or bool mask)."""
    return {k: v[index] for k, v in params.items()}


def concat_params(param_list):
    """Concatenate parameter dicts along the batch dimension."""
    return {k: torch.cat([p[k] for p in param_list]) for k in param_list[0]}


def params_to(params, device):
    """Move every parameter tensor to ``device``."""
    return {k: v.to(device) for k, v in params.items()}


# ----------------------------------------------------------------------------
# Geometry of the face (object coordinates, unmirrored, x < 0 is image-left)

_HEAD_CENTRE_Y = 0.10
_HEAD_RADII = (0.70, 0.64)
# Right ear (the left one is its mirror image): inner base, outer base, tip.
_EAR = ((0.14, -0.46), (0.60, -0.14), (0.58, -0.92))
# Entries of the shape vector, each a relative change in [-shape, shape].
SHAPE_NAMES = ('head_width', 'head_height', 'ear_length', 'ear_spread', 'ear_width', 'eye_spacing',
               'eye_height', 'eye_size', 'nose_size', 'nose_height', 'mouth_width', 'mouth_drop')
_SHAPE_HEAD_W, _SHAPE_HEAD_H, _SHAPE_EAR_LEN, _SHAPE_EAR_SPREAD, _SHAPE_EAR_W, _SHAPE_EYE_SEP, \
    _SHAPE_EYE_Y, _SHAPE_EYE_SIZE, _SHAPE_NOSE_SIZE, _SHAPE_NOSE_Y, _SHAPE_MOUTH_W, _SHAPE_MOUTH_DROP = \
    range(len(SHAPE_NAMES))


def _face_layout(shape):
    """Positions and sizes of every part for shape vectors (N, 12).

    Part positions follow the head's size (so parts stay attached); part sizes
    change on their own, which makes the family non-rigid.
    Returns a dict of (N,) tensors and (x, y) pairs of (N,) tensors.
    """
    d = [shape[:, i] for i in range(shape.shape[1])]
    hx, hy = 1 + d[_SHAPE_HEAD_W], 1 + d[_SHAPE_HEAD_H]

    def place(x, y):
        return x * hx, _HEAD_CENTRE_Y + (y - _HEAD_CENTRE_Y) * hy

    (ix, iy), (ox, oy), (tx, ty) = _EAR
    bcx, bcy = (ix + ox) / 2, (iy + oy) / 2
    ear_w, ear_len = 1 + d[_SHAPE_EAR_W], 1 + d[_SHAPE_EAR_LEN]
    ear_inner = place(bcx + (ix - bcx) * ear_w, bcy + (iy - bcy) * ear_w)
    ear_outer = place(bcx + (ox - bcx) * ear_w, bcy + (oy - bcy) * ear_w)
    ear_tip = place(bcx + (tx - bcx) * ear_len + 0.6 * d[_SHAPE_EAR_SPREAD], bcy + (ty - bcy) * ear_len)

    eye = place(0.27 * (1 + d[_SHAPE_EYE_SEP]), 0.3 * d[_SHAPE_EYE_Y])
    eye_size = 1 + d[_SHAPE_EYE_SIZE]
    nose_size = 1 + d[_SHAPE_NOSE_SIZE]
    nose = place(torch.zeros_like(hx), 0.25 + 0.3 * d[_SHAPE_NOSE_Y])
    nose_half_width, nose_height = 0.085 * nose_size, 0.07 * nose_size
    nose_bottom_y = nose[1] + nose_height / 2
    mouth_top_y = nose_bottom_y + 0.07 * (1 + d[_SHAPE_MOUTH_DROP])
    mouth_w = 0.16 * (1 + d[_SHAPE_MOUTH_W])
    return {
        'hx': hx, 'hy': hy,
        'head_radii': (_HEAD_RADII[0] * hx, _HEAD_RADII[1] * hy),
        'ear': (ear_inner, ear_outer, ear_tip),
        'eye': eye, 'eye_size': eye_size,
        'nose': nose, 'nose_half_width': nose_half_width, 'nose_height': nose_height,
        'nose_bottom_y': nose_bottom_y, 'mouth_top_y': mouth_top_y,
        'mouth_mid': (0.5 * mouth_w, mouth_top_y + 0.065), 'mouth_corner': (mouth_w, mouth_top_y + 0.035),
    }


def object_keypoints(shape):
    """Keypoints of unmirrored faces in object coordinates.

    Args:
        shape: (N, 12) relative shape changes.
    Returns:
        (N, NUM_KEYPOINTS, 2) object coordinates (x, y), KEYPOINT_NAMES order.
    """
    lay = _face_layout(shape)
    zero = torch.zeros_like(lay['hx'])
    ear_tip, eye, corner = lay['ear'][2], lay['eye'], lay['mouth_corner']
    nose_x, nose_y = lay['nose']
    rx, ry = lay['head_radii']
    points = [
        (-ear_tip[0], ear_tip[1]), ear_tip,
        (-eye[0], eye[1]), eye,
        (nose_x, nose_y - lay['nose_height'] / 6),   # centroid of the nose triangle
        (-corner[0], corner[1]), corner,
        (zero, _HEAD_CENTRE_Y + ry),
        (-rx, zero + _HEAD_CENTRE_Y), (rx, zero + _HEAD_CENTRE_Y),
    ]
    return torch.stack([torch.stack([x, y], dim=-1) for x, y in points], dim=1)


def _pose_matrix(params):
    # (N, 2, 2) scale * rotation and (N, 2) shift in normalised image coordinates.
    c, s = torch.cos(params['rotation']), torch.sin(params['rotation'])
    scale = params['scale']
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], dim=-2)
    return scale[:, None, None] * rot, 2 * params['translation']


def keypoints_from_params(params, size):
    """Exact keypoints of the faces ``params`` describe, for ``size`` x ``size`` images.

    Returns:
        (N, NUM_KEYPOINTS, 3): x, y in pixels (pixel centres at 0 .. size - 1)
        and visibility 1 when the point lies on the canvas ([0, size - 1] in
        both coordinates), else 0.
    """
    q = object_keypoints(params['shape'])
    mirror = params['mirror']
    mirrored = torch.stack([-q[..., 0], q[..., 1]], dim=-1)[:, MIRROR_PERMUTATION.to(q.device)]
    q = torch.where(mirror[:, None, None] > 0.5, mirrored, q)
    matrix, shift = _pose_matrix(params)
    p = torch.einsum('nij,npj->npi', matrix, q) + shift[:, None]
    xy = (p + 1) * size / 2 - 0.5
    visible = ((xy >= 0) & (xy <= size - 1)).all(dim=-1, keepdim=True).to(xy.dtype)
    return torch.cat([xy, visible], dim=-1)


def canonical_keypoints(size, factors=None):
    """(NUM_KEYPOINTS, 3) keypoints of the canonical face (see canonical_params)."""
    return keypoints_from_params(canonical_params(1, factors), size)[0]


def flip_keypoints(keypoints, size):
    """Keypoints of horizontally flipped images: x -> size - 1 - x, then reordered
    with MIRROR_PERMUTATION. keypoints: (N, P, 2 or 3) pixels; same shape back."""
    flipped = keypoints.clone()
    flipped[..., 0] = size - 1 - keypoints[..., 0]
    return flipped[:, MIRROR_PERMUTATION.to(keypoints.device)]


# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# Rendering

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

    lay = _face_layout(params['shape'])
    colors = params['colors']
    fur, marking, light, iris, nose_color, stripe_color, dark = (colors[:, i] for i in range(len(COLOR_NAMES)))
    white = torch.full_like(fur, 0.95)

    # Ears: outer (fur) and inner (light) triangles; the head hides their bases.
    ear = [(_b(ex_), _b(ey_)) for ex_, ey_ in lay['ear']]
    ears = cover(_sd_triangle(ax, y, *ear))
    image = _paint(image, ears, fur)
    # Inner ear: the outer triangle shrunk towards a point between its centroid and its base.
    anchor = [(ear[0][i] + ear[1][i] + ear[2][i]) / 6 + (ear[0][i] + ear[1][i]) / 4 for i in (0, 1)]
    inner = [tuple(anchor[i] + 0.6 * (v[i] - anchor[i]) for i in (0, 1)) for v in ear]
    image = _paint(image, cover(_sd_triangle(ax, y, *inner)), light)

    hx, hy = _b(lay['hx']), _b(lay['hy'])
    rx, ry = (_b(r) for r in lay['head_radii'])
    head = cover(_sd_ellipse(x, y, 0.0, _HEAD_CENTRE_Y, rx, ry))
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
    mx, my = x + 0.30 * hx, y - (_HEAD_CENTRE_Y - 0.30 * hy)
    patch = _sd_ellipse(mx * mc + my * ms, my * mc - mx * ms, 0.0, 0.0, 0.24 * hx, 0.19 * hy)
    image = _paint(image, cover(patch) * head, marking)

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
        image = _draw_background(part, size, x, y)
        images.append(_draw_face(image, part, size, x, y, edge_softness).clamp(-1, 1))
    if not images:
        images = [torch.zeros(0, 3, size, size, device=device, dtype=dtype)]
    return torch.cat(images), keypoints_from_params(params, size)


# ----------------------------------------------------------------------------
# Datasets

def to_uint8(images):
    """(N, 3, S, S) in [-1, 1] -> numpy uint8 (N, S, S, 3)."""
    return ((images.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _block_seed(seed, block):
    # Well-mixed, platform-independent seed for one parameter block.
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def indexed_params(indices, seed, factors=None):
    """Parameters of the faces with the given dataset ``indices`` for ``seed``.

    Face i's parameters depend only on (seed, i, factors), so any range of a
    dataset can be rendered on its own, in any order and batch size.
    Returns the dict of sample_params for len(indices) faces (CPU).
    """
    if seed < 0:
        raise UserError(f'synthetic world: seed must be >= 0, got {seed}')
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if (indices < 0).any():
        raise UserError('synthetic world: dataset indices must be >= 0')
    blocks, rank = torch.unique(indices // PARAM_BLOCK, return_inverse=True)
    drawn = [sample_params(PARAM_BLOCK, torch.Generator().manual_seed(_block_seed(seed, block)), factors)
             for block in blocks.tolist()]
    if not drawn:
        drawn = [sample_params(0, torch.Generator(), factors)]
    return slice_params(concat_params(drawn), rank * PARAM_BLOCK + indices % PARAM_BLOCK)


def iter_render_dataset(n, size, seed, factors=None, batch_size=64, device=None):
    """Render faces 0 .. n-1 of the dataset ``seed`` batch by batch.

    Yields (uint8 numpy images (b, S, S, 3), keypoints (b, NUM_KEYPOINTS, 3)
    float CPU tensor) for consecutive batches; suits writing to disk without
    holding the whole set in memory. ``device`` picks where to render.
    """
    if n < 0:
        raise UserError(f'synthetic world: number of images must be >= 0, got {n}')
    for start in range(0, n, batch_size):
        params = params_to(indexed_params(range(start, min(n, start + batch_size)), seed, factors), device or 'cpu')
        with torch.no_grad():
            images, keypoints = render(params, size)
        yield to_uint8(images), keypoints.cpu()


def render_dataset(n, size, seed, factors=None, batch_size=64, device=None):
    """Render a dataset of ``n`` faces at ``size`` for ``seed``.

    The same (n, seed, factors) gives the same faces at every size, and a
    smaller n gives a prefix of a larger one.
    Returns:
        uint8 numpy images (N, S, S, 3) and keypoints (N, NUM_KEYPOINTS, 3)
        float tensor (x, y pixels at this size, visibility).
    """
    images, keypoints = [], []
    for batch_images, batch_keypoints in iter_render_dataset(n, size, seed, factors, batch_size, device):
        images.append(batch_images)
        keypoints.append(batch_keypoints)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), torch.zeros(0, NUM_KEYPOINTS, 3)
    return np.concatenate(images), torch.cat(keypoints)


# ----------------------------------------------------------------------------
# Command-line options shared by the synthetic generator and dataset mode

def add_world_options(parser):
    """Add the --synthetic_* world flags to ``parser`` (once; later calls do nothing)."""
    if '--synthetic_rotation' in parser._option_string_actions:
        return parser
    d = WorldFactors()
    group = parser.add_argument_group('synthetic world')
    group.add_argument('--synthetic_rotation', type=float, default=d.rotation,
                       help='largest |rotation| of synthetic faces in degrees (0 = upright)')
    group.add_argument('--synthetic_scale', type=float, nargs=2, default=list(d.scale), metavar=('MIN', 'MAX'),
                       help='size range of synthetic faces as a fraction of the canvas')
    group.add_argument('--synthetic_translation', type=float, default=d.translation,
                       help='largest shift of synthetic faces per axis, as a fraction of the canvas')
    group.add_argument('--synthetic_no_mirror', action='store_true',
                       help='never mirror synthetic faces (rendered or generated)')
    group.add_argument('--synthetic_shape', type=float, default=d.shape,
                       help='largest relative change of face part sizes and positions (0 = rigid)')
    group.add_argument('--synthetic_no_appearance', action='store_true',
                       help='give every synthetic face the canonical colours and texture')
    group.add_argument('--synthetic_no_background', action='store_true',
                       help='draw synthetic faces on a flat background (no gradient, noise or distractors)')
    group.add_argument('--synthetic_distractors', type=int, default=d.distractors,
                       help=f'number of distractor shapes in synthetic backgrounds (0-{MAX_DISTRACTORS})')
    return parser


def factors_from_options(opt):
    """WorldFactors from parsed --synthetic_* options (validated; UserError if out of range)."""
    d = WorldFactors()
    return WorldFactors(
        rotation=getattr(opt, 'synthetic_rotation', d.rotation),
        scale=tuple(getattr(opt, 'synthetic_scale', d.scale)),
        translation=getattr(opt, 'synthetic_translation', d.translation),
        mirror=not getattr(opt, 'synthetic_no_mirror', False),
        shape=getattr(opt, 'synthetic_shape', d.shape),
        appearance=not getattr(opt, 'synthetic_no_appearance', False),
        background=not getattr(opt, 'synthetic_no_background', False),
        distractors=getattr(opt, 'synthetic_distractors', d.distractors),
    ).validate()
