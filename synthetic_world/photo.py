"""The photo-like factors: a scene in the camera's frame, occluders in front of the face, lighting.

All three are off in the default world. When any is on, ``PHOTO_FACTORS``
extra uniforms and one scene noise field (``SCENE_NOISE_SHAPE``) are drawn per
image, after every other factor, so the faces (pose, shape, appearance) of a
dataset stay those of the same seed without them.

- scene (``WorldFactors.scene``): the background laid out in the *camera's*
  frame (normalised image coordinates), independent of the face's pose: a
  two-colour wall gradient, a floor below a tilted horizon (three scenes in
  four), luminance texture at three scales (4, 8 and 16 cells across the
  canvas) and four shapes (disc, rounded box, ring, ellipse). It replaces the
  face-frame background.
- occluders (``WorldFactors.occluders`` = N): 0 to N shapes in front of the
  face (count uniform in 0 .. N), each a bar across the canvas, a blob or a
  paw (a pad, three toes and an arm reaching in from outside), in the camera's
  frame near the middle of the canvas. A keypoint inside one is hidden
  (visibility 0), as annotators of real photos mark it.
- lighting (``WorldFactors.lighting`` = S in [0, 1]): a shading gradient
  across the face (in the face's frame: up to +-0.6 S relative brightness
  from one side to the other), then brightness (+-0.25 S), contrast
  (1 +- 0.4 S) and a colour cast (+-0.2 S per channel) over the whole picture.

Uniform layout (``PHOTO_SLICES``): scene, occluders, lighting.
"""
import math

import torch
import torch.nn.functional as F

from synthetic_world.shapes import coverage, sd_circle, sd_ellipse, sd_oriented_box

SCENE_SHAPES = 4                 # disc, rounded box, ring, ellipse
SCENE_FACTORS = 6 + 1 + 3 + 3 + 3 + SCENE_SHAPES * 7   # wall colours, angle, floor colour, horizon, texture, shapes
MAX_OCCLUDERS = 3
OCCLUDER_KINDS = ('bar', 'blob', 'paw')
OCCLUDER_FACTORS = 1 + MAX_OCCLUDERS * 8   # count; per occluder kind, x, y, size, angle, colour (3)
LIGHT_FACTORS = 7                # brightness, contrast, cast (3), shading direction, shading strength
MAX_LIGHTING = 1.0
PHOTO_GROUPS = (('scene', SCENE_FACTORS), ('occluders', OCCLUDER_FACTORS), ('lighting', LIGHT_FACTORS))
PHOTO_SLICES = {}
_start = 0
for _name, _width in PHOTO_GROUPS:
    PHOTO_SLICES[_name] = slice(_start, _start + _width)
    _start += _width
PHOTO_FACTORS = _start
SCENE_NOISE_SHAPE = (3, 16, 16)  # one channel per texture scale
_SCENE_CANON = ((0.35, 0.45, 0.55), (-0.15, 0.0, 0.20))
OCCLUDER_REACH = 0.6             # occluder centres lie within +-this of the canvas centre (normalised units)


def photo_params(u, scene_noise, factors):
    """Physical parameters of the photo factors that are on.

    Args:
        u: (N, PHOTO_FACTORS) uniforms in [0, 1] (PHOTO_SLICES).
        scene_noise: (N, *SCENE_NOISE_SHAPE) standard normal.
        factors: WorldFactors.
    Returns:
        dict (only the keys of factors that are on):
        scene_colors (N, 3, 3) wall colours 0 and 1 and floor colour in [-1, 1];
        scene_layout (N, 4): gradient angle, horizon height (normalised y),
        horizon tilt (radians), floor on (0 or 1); scene_texture (N, 3)
        strengths of the coarse, middle and fine texture; scene_shapes
        (N, SCENE_SHAPES, 4) x, y, radius, angle; scene_shape_colors
        (N, SCENE_SHAPES, 3); scene_noise;
        occluders (N, MAX_OCCLUDERS, 6): present (0/1), kind
        (OCCLUDER_KINDS index), x, y, size in [0, 1], angle; occluder_colors
        (N, MAX_OCCLUDERS, 3);
        lighting (N, 7): brightness, contrast, cast (3), shading direction
        (radians), shading strength.
    """
    n = u.shape[0]
    out = {}
    if factors.scene:
        s = u[:, PHOTO_SLICES['scene']]
        canon = torch.tensor(_SCENE_CANON, dtype=u.dtype, device=u.device)
        walls = (canon + 0.8 * (2 * s[:, 0:6].view(n, 2, 3) - 1)).clamp(-1, 1)
        floor = 0.85 * (2 * s[:, 7:10] - 1)
        out['scene_colors'] = torch.cat([walls, floor[:, None]], dim=1)
        out['scene_layout'] = torch.stack([
            2 * math.pi * s[:, 6], -0.3 + 0.9 * s[:, 10], 0.25 * (2 * s[:, 11] - 1),
            (s[:, 12] < 0.75).to(u.dtype)], dim=1)
        out['scene_texture'] = 0.25 * s[:, 13:16]
        shapes = s[:, 16:].reshape(n, SCENE_SHAPES, 7)
        out['scene_shapes'] = torch.stack([2 * shapes[..., 0] - 1, 2 * shapes[..., 1] - 1,
                                           0.1 + 0.35 * shapes[..., 2], math.pi * shapes[..., 3]], dim=-1)
        out['scene_shape_colors'] = 0.9 * (2 * shapes[..., 4:7] - 1)
        out['scene_noise'] = scene_noise
    if factors.occluders > 0:
        o = u[:, PHOTO_SLICES['occluders']]
        count = (o[:, :1].detach() * (factors.occluders + 1)).floor().clamp(max=factors.occluders)
        slots = o[:, 1:].reshape(n, MAX_OCCLUDERS, 8)
        present = (torch.arange(MAX_OCCLUDERS, device=u.device, dtype=u.dtype) < count).to(u.dtype)
        kind = (slots[..., 0].detach() * len(OCCLUDER_KINDS)).floor().clamp(max=len(OCCLUDER_KINDS) - 1)
        out['occluders'] = torch.stack([present, kind, OCCLUDER_REACH * (2 * slots[..., 1] - 1),
                                        OCCLUDER_REACH * (2 * slots[..., 2] - 1), slots[..., 3],
                                        2 * math.pi * slots[..., 4]], dim=-1)
        out['occluder_colors'] = 0.9 * (2 * slots[..., 5:8] - 1)
    if factors.lighting > 0:
        g, strength = u[:, PHOTO_SLICES['lighting']], factors.lighting
        out['lighting'] = torch.cat([
            0.25 * strength * (2 * g[:, 0:1] - 1), 1 + 0.4 * strength * (2 * g[:, 1:2] - 1),
            0.2 * strength * (2 * g[:, 2:5] - 1), 2 * math.pi * g[:, 5:6], 0.6 * strength * g[:, 6:7]], dim=1)
    return out


def _b(t):
    return t[:, None, None]


def _paint(image, alpha, color):
    return torch.lerp(image, color[:, :, None, None].expand_as(image), alpha[:, None])


def draw_scene(params, px, py, sharp):
    """The camera-frame scene (N, 3, S, S) under pixel centres px, py (N, S, S) in normalised
    image coordinates; ``sharp`` = -(pixels per normalised unit) / ramp width."""
    colors, layout = params['scene_colors'], params['scene_layout']
    angle = _b(layout[:, 0])
    t = ((px * torch.cos(angle) + py * torch.sin(angle)) * (0.5 / math.sqrt(2)) + 0.5).clamp(0, 1)
    image = colors[:, 0, :, None, None] + t[:, None] * (colors[:, 1] - colors[:, 0])[:, :, None, None]
    # The floor: below a tilted horizon, darker towards the camera's bottom edge.
    horizon = _b(layout[:, 1]) + torch.tan(_b(layout[:, 2])) * px
    floor = coverage((horizon - py) * sharp) * _b(layout[:, 3])
    depth = (1 - 0.25 * (py - horizon).clamp(0, 2))[:, None]
    image = torch.lerp(image, colors[:, 2, :, None, None] * depth, floor[:, None])
    # Luminance texture at three scales: the field's 16 x 16 cells seen over 4, 8 and 16 cells.
    grid = torch.stack([px, py], dim=-1)
    texture = 0
    for k, zoom in enumerate((0.25, 0.5, 1.0)):
        field = F.grid_sample(params['scene_noise'][:, k:k + 1], grid * zoom, mode='bilinear',
                              padding_mode='border', align_corners=False)
        texture = texture + params['scene_texture'][:, k, None, None, None] * field
    image = image + texture
    shapes, tints = params['scene_shapes'], params['scene_shape_colors']
    for k in range(SCENE_SHAPES):
        cx, cy, r, a = (_b(shapes[:, k, i]) for i in range(4))
        if k == 0:
            sd = sd_circle(px, py, cx, cy, r)
        elif k == 1:
            sd = sd_oriented_box(px, py, cx, cy, r, 0.6 * r, a, 0.2 * r)
        elif k == 2:
            sd = sd_circle(px, py, cx, cy, r).abs() - 0.2 * r
        else:
            c, s = torch.cos(a), torch.sin(a)
            lx, ly = (px - cx) * c + (py - cy) * s, -(px - cx) * s + (py - cy) * c
            sd = sd_ellipse(lx, ly, 0.0, 0.0, r, 0.45 * r)
        image = _paint(image, coverage(sd * sharp), tints[:, k])
    return image


def shade_object(image, params, x, y, object_alpha):
    """The lighting's shading gradient across the face: x, y (N, S, S) object coordinates,
    object_alpha (N, S, S) the face's coverage. Returns the shaded image."""
    light = params['lighting']
    direction, strength = _b(light[:, 5]), _b(light[:, 6])
    gradient = (x * torch.cos(direction) + y * torch.sin(direction)).clamp(-1, 1)
    return image + ((object_alpha * strength * gradient)[:, None]) * (image + 1)


def occluder_distance(params, px, py):
    """Signed distance (normalised units) to the nearest present occluder at points px, py
    (N, ...): negative inside one, +inf where an image has none."""
    occ = params['occluders']
    shape = (-1,) + (1,) * (px.dim() - 1)
    best = torch.full_like(px, float('inf'))
    for k in range(MAX_OCCLUDERS):
        present, kind, cx, cy, size, angle = (occ[:, k, i].reshape(shape) for i in range(6))
        if not bool((occ[:, k, 0] > 0).any()):
            continue
        c, s = torch.cos(angle), torch.sin(angle)
        # bar: a long thin rounded rectangle across the canvas.
        half = 0.05 + 0.08 * size
        bar = sd_oriented_box(px, py, cx, cy, 1.6 * torch.ones_like(half), half, angle, 0.5 * half)
        # blob: an ellipse.
        lx, ly = (px - cx) * c + (py - cy) * s, -(px - cx) * s + (py - cy) * c
        blob = sd_ellipse(lx, ly, 0.0, 0.0, 0.18 + 0.2 * size, 0.12 + 0.1 * size)
        # paw: a pad with three toes, and an arm reaching in from beyond the canvas.
        r = 0.1 + 0.08 * size
        paw = sd_circle(px, py, cx, cy, r)
        for turn in (-0.7, 0.0, 0.7):
            tx, ty = cx + 1.3 * r * torch.cos(angle + turn), cy + 1.3 * r * torch.sin(angle + turn)
            paw = torch.minimum(paw, sd_circle(px, py, tx, ty, 0.45 * r))
        arm = sd_oriented_box(px, py, cx - 1.6 * c, cy - 1.6 * s, 1.6 * torch.ones_like(r), 0.8 * r, angle, 0.3 * r)
        paw = torch.minimum(paw, arm)
        sd = torch.where(kind == 0, bar, torch.where(kind == 1, blob, paw))
        best = torch.where(present > 0, torch.minimum(best, sd), best)
    return best


def draw_occluders(image, params, px, py, sharp):
    """Paint the occluders over ``image`` (N, 3, S, S); px, py (N, S, S) normalised pixel centres."""
    occ, colors = params['occluders'], params['occluder_colors']
    for k in range(MAX_OCCLUDERS):
        if not bool((occ[:, k, 0] > 0).any()):
            continue
        single = dict(params, occluders=occ * (torch.arange(MAX_OCCLUDERS, device=occ.device) == k)[None, :, None])
        sd = occluder_distance(single, px, py)
        alpha = torch.where(torch.isfinite(sd), coverage(sd.clamp(-10, 10) * sharp), torch.zeros_like(sd))
        image = _paint(image, alpha, colors[:, k])
    return image


def light_image(image, params):
    """Brightness, contrast and colour cast over the whole picture (N, 3, S, S) in [-1, 1]."""
    light = params['lighting']
    v = (image + 1) / 2
    v = (v - 0.5) * light[:, 1, None, None, None] + 0.5 + light[:, 0, None, None, None]
    v = v * (1 + light[:, 2:5, None, None])
    return 2 * v - 1


def occluded_points(params, points):
    """(N, P) bool: whether each point (N, P, 2) in normalised image coordinates lies inside an occluder."""
    if 'occluders' not in params:
        return torch.zeros(points.shape[:2], dtype=torch.bool, device=points.device)
    return occluder_distance(params, points[..., 0], points[..., 1]) < 0
