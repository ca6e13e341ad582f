"""The world's random factors: their layout, ranges and the physical parameters they give.

Faces are drawn from independent uniforms ``u`` in [0, 1] (``NUM_FACTORS`` of
them, grouped in ``FACTOR_GROUPS``) plus two Gaussian noise fields;
``params_from_factors`` turns them into the parameter dict that the renderer
draws and the keypoints are computed from.
"""
import math
from dataclasses import dataclass

import torch

from utils.errors import UserError
from synthetic_world.deformation import DEFORMATION_FACTORS, MAX_DEFORMATION
from synthetic_world.photo import MAX_LIGHTING, MAX_OCCLUDERS, PHOTO_FACTORS, SCENE_NOISE_SHAPE, photo_params

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


def _group_slices(groups):
    # {name: slice of the factor vector}, groups laid out one after another.
    slices, start = {}, 0
    for name, width in groups:
        slices[name] = slice(start, start + width)
        start += width
    return slices


FACTOR_SLICES = _group_slices(FACTOR_GROUPS)
NUM_FACTORS = sum(width for _, width in FACTOR_GROUPS)
POSE_SHAPE_GROUPS = ('scale', 'rotation', 'translation', 'shape')
APPEARANCE_GROUPS = ('fur_colors', 'feature_colors', 'texture')
# The face's geometry is left/right symmetric, so a mirrored face has the same
# labelled keypoints as its unmirrored twin and differs only in which eye
# carries the marking (and in mirrored textures): mirroring is an appearance
# factor of this world, and the synthetic generator reads it from a fine entry.

# Modes: with WorldFactors.modes = K > 1 every face belongs to one of K
# visually distinct head types (synthetic_world.keypoints.MODE_NAMES).
# The mode rides on the first shape factor (head width): its uniform u gives
# mode floor(K u) and, rescaled, K u - mode as the head width's own uniform, so
# mode and head width stay independent and uniform, and K = 1 leaves every
# factor (and so every face) exactly as it was. A coarse factor, so the
# synthetic generator's pose-and-shape entries decide it.
MAX_MODES = 3
MODE_FACTOR = FACTOR_SLICES['shape'].start

FUR_NOISE_SHAPE = (1, 16, 16)         # per image; sampled in object coordinates
BACKGROUND_NOISE_SHAPE = (3, 6, 6)    # per image; upsampled over the canvas
MAX_DISTRACTORS = 3


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
    modes: how many distinct head types (1 to MAX_MODES) faces are drawn
        from, in equal shares (see MODE_FACTOR).
    deformation: largest coefficient of the smooth per-face deformation
        (synthetic_world.deformation; 0 = off, the default world).
        Its uniform factors are drawn after all others, so switching it on
        leaves every other factor of a dataset as it was.
    scene: lay the background out in the camera's frame, independent of the
        face's pose (synthetic_world.photo); off: the face-frame background.
    occluders: up to this many shapes (0 to MAX_OCCLUDERS) in front of the
        face; keypoints they cover are invisible.
    lighting: strength (0 to MAX_LIGHTING) of per-image shading, brightness,
        contrast and colour cast.
        The photo factors' uniforms are drawn after the deformation's, and
        only when one of them is on (see ``photo``).
    """
    rotation: float = 45.0
    scale: tuple = (0.6, 1.0)
    translation: float = 0.15
    mirror: bool = True
    shape: float = 0.15
    appearance: bool = True
    background: bool = True
    distractors: int = MAX_DISTRACTORS
    modes: int = 1
    deformation: float = 0.0
    scene: bool = False
    occluders: int = 0
    lighting: float = 0.0

    @property
    def photo(self):
        """Whether any photo-like factor (scene, occluders, lighting) is on."""
        return bool(self.scene) or self.occluders > 0 or self.lighting > 0

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
            (int(self.modes) == self.modes and 1 <= self.modes <= MAX_MODES,
             f'modes must be an integer from 1 to {MAX_MODES}, got {self.modes}'),
            (0 <= self.deformation <= MAX_DEFORMATION,
             f'deformation must be in [0, {MAX_DEFORMATION}], got {self.deformation}'),
            (int(self.occluders) == self.occluders and 0 <= self.occluders <= MAX_OCCLUDERS,
             f'occluders must be an integer from 0 to {MAX_OCCLUDERS}, got {self.occluders}'),
            (0 <= self.lighting <= MAX_LIGHTING,
             f'lighting strength must be in [0, {MAX_LIGHTING:g}], got {self.lighting}'),
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
COLOR_NAMES = ('fur', 'marking', 'light', 'iris', 'nose', 'stripe', 'dark')


def _palette_color(name, u):
    canon, spread = _PALETTE[name]
    canon = torch.tensor(canon, dtype=u.dtype, device=u.device)
    return (canon + spread * (2 * u - 1)).clamp(-1, 1)


def params_from_factors(u, fur_noise, background_noise, factors=None, deformation_u=None, photo_u=None,
                        scene_noise=None):
    """Physical world parameters from uniform factors and noise fields.

    Args:
        u: (N, NUM_FACTORS) in [0, 1], laid out as FACTOR_GROUPS.
        fur_noise: (N, *FUR_NOISE_SHAPE) standard normal.
        background_noise: (N, *BACKGROUND_NOISE_SHAPE) standard normal.
        factors: WorldFactors (defaults if None); switched-off factors take
            their canonical value whatever ``u`` says.
        deformation_u: (N, DEFORMATION_FACTORS) in [0, 1], or None (no
            deformation); used only when ``factors.deformation`` > 0.
    Returns:
        dict of tensors (all on u's device), N first:
        scale (N,) canvas fraction, rotation (N,) radians, translation (N, 2)
        canvas fraction, mirror (N,), shape (N, 12) relative, colors (N, 7, 3)
        in [-1, 1] (COLOR_NAMES), stripes (N, 4) frequency/angle/phase/strength,
        gaze (N, 2) in [-1, 1], fur_noise_strength (N,), fur_noise,
        background (N, 2, 3), background_angle (N,), background_noise_strength
        (N,), background_noise, distractors (N, 3, 4) x/y/radius/shade and
        distractor_opacity (N, 3), deformation (N, DEFORMATION_FACTORS)
        coefficients in [-D, D] (zeros when off) and mode (N,) (0 .. modes - 1,
        as floats); plus the keys of synthetic_world.photo.photo_params for
        the photo factors that are on. Differentiable with respect to ``u``,
        ``deformation_u`` and ``photo_u``.
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
    shape_u = group('shape')
    if factors.modes > 1:
        # The mode takes the head-width factor's leading part (see MODE_FACTOR).
        spread = factors.modes * shape_u[:, 0]
        mode = spread.detach().floor().clamp(0, factors.modes - 1)
        shape_u = torch.cat([(spread - mode)[:, None], shape_u[:, 1:]], dim=1)
    else:
        mode = torch.zeros(n, dtype=u.dtype, device=u.device)
    shape = factors.shape * (2 * shape_u - 1)

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
    if factors.deformation > 0 and deformation_u is not None:
        deformation = factors.deformation * (2 * deformation_u - 1)
    else:
        deformation = u.new_zeros(n, DEFORMATION_FACTORS)
    params = {
        'scale': scale, 'rotation': rotation, 'translation': translation,
        'mirror': mirror, 'shape': shape, 'colors': colors, 'stripes': stripes,
        'gaze': gaze, 'fur_noise_strength': fur_noise_strength, 'fur_noise': fur_noise,
        'background': background, 'background_angle': background_angle,
        'background_noise_strength': background_noise_strength, 'background_noise': background_noise,
        'distractors': distractors, 'distractor_opacity': distractor_opacity,
        'deformation': deformation, 'mode': mode,
    }
    if factors.photo and photo_u is not None:
        if photo_u.shape != (n, PHOTO_FACTORS):
            raise UserError(f'synthetic world: photo factors must have shape (N, {PHOTO_FACTORS}), '
                            f'got {tuple(photo_u.shape)}')
        params.update(photo_params(photo_u, scene_noise, factors))
    return params


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
    # Drawn last, and only when used: the default world's draws stay as they were.
    deformation_u = torch.rand(n, DEFORMATION_FACTORS, generator=generator) if factors.deformation > 0 else None
    photo_u = scene_noise = None
    if factors.photo:  # drawn whole whichever photo factors are on, so each keeps its draws
        photo_u = torch.rand(n, PHOTO_FACTORS, generator=generator)
        scene_noise = torch.randn(n, *SCENE_NOISE_SHAPE, generator=generator)
    return params_from_factors(u, fur_noise, background_noise, factors, deformation_u, photo_u, scene_noise)


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
