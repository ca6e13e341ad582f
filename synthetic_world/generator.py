"""A differentiable generator of the synthetic world with StyleGAN2's interface.

z (N, style_dim) -> w by a fixed mapping: scale each coordinate, then rotate by
a fixed orthogonal matrix (drawn from a fixed seed, so every run has the same
world). The W+ latent has ``n_latent`` = 8 entries; like StyleGAN's coarse and
fine layers, entries [0, 4) set pose and shape and entries [4, 8) appearance:

    entry 0: scale, rotation        entry 4: fur, marking and light colours, mirror
    entry 1: translation            entry 5: iris, nose, stripe and dark colours
    entry 2: shape factors 0-5      entry 6: stripes, fur-noise strength, gaze
    entry 3: shape factors 6-11     entry 7: background (colours, gradient,
                                             noise, distractors)

The renderer lays the background out in the face's frame (the scene moves
with the face, as under a moving camera), so a congealing target, which keeps
its input's fine entries, shows its input's background moved along with the
face: aligning the face aligns the background too. (Two layouts measured
worse: a background in the fine entries but fixed to the canvas pinned the
learned warp to the identity, and a background in the coarse entries gave
every target its own background, whose mismatch drowned the rotation signal.)

Each world factor j reads coordinate j of its entry in the mapping's basis,
divided by that coordinate's scale, which is standard normal for w = style(z);
the normal CDF turns it into the uniform factor the renderer expects. So the
generator's images follow exactly the distribution of
``synthetic_world.sample_params``, as a GAN trained on the rendered data
would, and the mean latent w = 0 gives the canonical face: upright, centred,
mean size and shape, canonical palette, unmirrored (an estimated mean may come
out mirrored, which moves no keypoint). Coordinates beyond the NUM_FACTORS
used ones have no effect.

With ``factors.modes`` = K > 1 the face's head type (its mode,
``synthetic_world.keypoints.MODE_NAMES``) is read from the head-width
coordinate of entry 2, a coarse entry: a congealing target takes its mode from
the target latent, and the mode's coordinate is W's widest (``MODE_SPREAD``),
so clustering can find the modes.

With the world's smooth deformation switched on (``WorldFactors.deformation``
> 0), its DEFORMATION_FACTORS coefficients are shape factors too: they read
coordinates NUM_FACTORS .. NUM_FACTORS + 7 of entries 2 and 3 (half each),
so such a generator needs style_dim >= NUM_FACTORS + DEFORMATION_FACTORS, and
a congealing target (coarse entries from the mean) is undeformed.

The photo factors (``synthetic_world.photo``: a camera-frame scene,
occluders, lighting) are fine factors too, read from coordinates of entries
7, 5 and 4 that those entries' own factors leave unused; the scene's texture
is a fixed projection of entry 7. Pose latents move the face alone: a
congealing target keeps its input's scene, occluders and light.

Mirroring is read from a fine entry: the face's geometry is symmetric, so a
mirrored face keeps its labelled keypoints and differs from its twin only in
which eye carries the marking (and in mirrored textures), an appearance
change. A congealing target therefore keeps its input's mirror, and the
transformer learns to align both.

The fur texture and the background noise pattern are, like the rest of the
appearance, set by the fine latents (entries 6 and 7, through fixed random
projections), and noise inputs play the role of StyleGAN's: they add a small
stochastic part (``NOISE_SHARE`` of each pattern's variance), so two renders of
one latent with fresh noise differ only in fine detail, as GANgealing's pairs
assume. ``noise`` is a list [fur (B, 1, 16, 16), background (B, 3, 6, 6)] with
B = 1 or N (a None entry is drawn as below); without it, ``randomize_noise``
draws fresh standard normal fields, otherwise the fixed fields stored in the
module are used. Either way each pattern stays standard normal, as in the
renderer's "real" images.
"""
import math

import torch
from torch import nn

import synthetic_world as world
from utils.errors import UserError
from synthetic_world.deformation import DEFORMATION_FACTORS
from synthetic_world.photo import PHOTO_GROUPS, SCENE_NOISE_SHAPE

N_LATENT = 8
COARSE_LAYERS = 4  # W+ entries [0, COARSE_LAYERS) set pose and shape: the natural --inject
MAPPING_SEED = 20220601
MODE_SPREAD = 3.0  # W spread of the mode's coordinate in a world of several modes
NOISE_SHARE = 0.02  # variance share of the noise inputs in the fur and background patterns
_PATTERN_LAYERS = (6, 7)  # W+ entries setting the fur and the background patterns
_DEFORMATION_LAYERS = (2, 3)  # W+ entries holding the deformation coefficients (shape entries)

# The photo factors (synthetic_world.photo) are fine factors: W+ entry and first
# coordinate of each group. Each entry's coordinates below are ones its own
# world factors leave unused (entry 7 reads 45-64, entry 5 25-36, entry 4
# 16-24 and 64), so the photo factors are independent of the rest and need no
# wider W. A congealing target keeps them all: its input's scene, occluders
# and light, as a StyleGAN's coarse latents turn the cat and keep the room.
_PHOTO_PLACES = {'scene': (7, 0), 'occluders': (5, 37), 'lighting': (4, 0)}
_SCENE_LAYER = 7  # the scene's texture pattern comes from this entry, as the background's does


def _photo_index():
    # (entries, coordinates) LongTensors (PHOTO_FACTORS,) where each photo factor is read.
    entries, coordinates = [], []
    for name, width in PHOTO_GROUPS:
        entry, start = _PHOTO_PLACES[name]
        entries += [entry] * width
        coordinates += list(range(start, start + width))
    return torch.tensor(entries), torch.tensor(coordinates)


# W+ entry of each factor group; a tuple spreads the group evenly over those entries.
_LAYER_OF_GROUP = {
    'scale': 0, 'rotation': 0, 'translation': 1, 'shape': (2, 3),
    'fur_colors': 4, 'feature_colors': 5, 'texture': 6, 'background': 7, 'mirror': 4,
}


def _factor_layers():
    layers = []
    for name, width in world.FACTOR_GROUPS:
        entry = _LAYER_OF_GROUP[name]
        entries = entry if isinstance(entry, tuple) else (entry,)
        layers += [entries[i * len(entries) // width] for i in range(width)]
    return torch.tensor(layers, dtype=torch.long)


def _coordinate_scales(style_dim, modes=1):
    # Pose and shape coordinates get the largest spread so that W's principal
    # directions are, in order, scale, rotation, translation and shape (as pose
    # dominates StyleGAN's W); unused coordinates get the smallest. In a world
    # of several modes the mode's coordinate spreads widest of all, as the
    # class of an object is W's dominant direction in a multi-modal GAN: PCA's
    # first direction and a k-means split of W then run across the modes.
    scales = torch.full((style_dim,), 0.5)
    n_coarse = sum(w for name, w in world.FACTOR_GROUPS if name in world.POSE_SHAPE_GROUPS)
    scales[:n_coarse] = torch.linspace(2.0, 1.25, n_coarse)
    scales[n_coarse:world.NUM_FACTORS] = 1.0
    if modes > 1:
        scales[world.MODE_FACTOR] = MODE_SPREAD
    return scales


class FixedMapping(nn.Module):
    """The mapping network z -> w: ``w = (z * scales) @ weight.T``.

    ``weight`` (style_dim, style_dim) is orthogonal, so w is Gaussian with
    covariance weight diag(scales^2) weight^T. ``coordinates(w)`` inverts it to
    standard normal coordinates. Both are fixed (not trained).
    """

    def __init__(self, style_dim, seed=MAPPING_SEED, modes=1):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(style_dim, style_dim, generator=generator, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # the unique QR factor with a positive diagonal in R
        self.weight = nn.Parameter(q.float(), requires_grad=False)
        self.register_buffer('scales', _coordinate_scales(style_dim, modes))

    def forward(self, z):
        """z (..., style_dim) -> w (..., style_dim)."""
        return (z * self.scales) @ self.weight.t()

    def coordinates(self, w):
        """w (..., style_dim) -> standard normal coordinates (..., style_dim)."""
        return (w @ self.weight) / self.scales


class SyntheticGenerator(nn.Module):
    """Differentiable renderer of the synthetic world driven by StyleGAN-like latents.

    Args:
        size: output resolution (images are (N, 3, size, size) in [-1, 1]).
        style_dim: width of z and w; at least synthetic_world.NUM_FACTORS (65).
        n_mlp: accepted for parity with models.Generator and ignored (the
            mapping is one fixed linear map).
        factors: synthetic_world.WorldFactors (ranges and switches).
        edge_softness: anti-aliasing ramp width in pixels.
    """

    def __init__(self, size=64, style_dim=world.NUM_FACTORS, n_mlp=None, factors=None, edge_softness=0.25):
        super().__init__()
        if style_dim < world.NUM_FACTORS:
            raise UserError(f'the synthetic generator needs style_dim >= {world.NUM_FACTORS}, got {style_dim}')
        if int(size) != size or size < 8:
            raise UserError(f'the synthetic generator needs an image size >= 8, got {size}')
        factors = (factors or world.WorldFactors()).validate()
        if factors.deformation > 0 and style_dim < world.NUM_FACTORS + DEFORMATION_FACTORS:
            raise UserError(f'the synthetic world\'s deformation is read from latent coordinates '
                            f'{world.NUM_FACTORS}..{world.NUM_FACTORS + DEFORMATION_FACTORS - 1}: it needs '
                            f'--dim_latent >= {world.NUM_FACTORS + DEFORMATION_FACTORS}, got {style_dim}')
        self.size = int(size)
        self.style_dim = style_dim
        self.n_latent = N_LATENT
        self.coarse_layers = COARSE_LAYERS
        self.factors = factors
        self.edge_softness = edge_softness
        self.style = FixedMapping(style_dim, modes=self.factors.modes)
        self.register_buffer('factor_layer', _factor_layers(), persistent=False)
        generator = torch.Generator().manual_seed(MAPPING_SEED + 1)
        self.register_buffer('noise_fur', torch.randn(1, *world.FUR_NOISE_SHAPE, generator=generator))
        self.register_buffer('noise_background', torch.randn(1, *world.BACKGROUND_NOISE_SHAPE, generator=generator))
        # Fixed projections from a W+ entry's coordinates to unit-variance patterns.
        for name, shape in (('fur', world.FUR_NOISE_SHAPE), ('background', world.BACKGROUND_NOISE_SHAPE)):
            projection = torch.randn(style_dim, math.prod(shape), generator=generator) / math.sqrt(style_dim)
            self.register_buffer(f'pattern_{name}', projection, persistent=False)
        # The photo scene's texture: unit-norm columns, so each value is standard normal.
        projection = torch.randn(style_dim, math.prod(SCENE_NOISE_SHAPE), generator=generator)
        self.register_buffer('pattern_scene', projection / projection.norm(dim=0, keepdim=True), persistent=False)
        entries, coordinates = _photo_index()
        self.register_buffer('photo_entry', entries, persistent=False)
        self.register_buffer('photo_coordinate', coordinates, persistent=False)

    def extra_repr(self):
        return f'size={self.size}, style_dim={self.style_dim}, n_latent={self.n_latent}, factors={self.factors}'

    # -- latents ------------------------------------------------------------
    def get_latent(self, z):
        """z (N, style_dim) -> w (N, style_dim)."""
        return self.style(z)

    def batch_latent(self, n):
        """(n, style_dim) w samples."""
        return self.style(torch.randn(n, self.style_dim, device=self.style.weight.device))

    def mean_latent(self, n):
        """(1, style_dim) average of n w samples (close to 0, the canonical face)."""
        return self.batch_latent(n).mean(dim=0, keepdim=True)

    def make_noise(self, batch_size=1):
        """Fresh noise inputs: [fur (B, 1, 16, 16), background (B, 3, 6, 6)]."""
        device = self.style.weight.device
        return [torch.randn(batch_size, *world.FUR_NOISE_SHAPE, device=device),
                torch.randn(batch_size, *world.BACKGROUND_NOISE_SHAPE, device=device)]

    def _wplus(self, styles, inject_index):
        # One or two w / W+ tensors -> W+ (N, n_latent, style_dim).
        def expand(s):
            if s.dim() == 2:
                return s.unsqueeze(1).expand(-1, self.n_latent, -1)
            if s.dim() == 3 and s.shape[1] == self.n_latent:
                return s
            raise UserError(f'synthetic generator: styles must be (N, {self.style_dim}) or '
                            f'(N, {self.n_latent}, {self.style_dim}), got {tuple(s.shape)}')
        if len(styles) == 1:
            return expand(styles[0])
        if len(styles) != 2:
            raise UserError(f'synthetic generator: expected one or two styles, got {len(styles)}')
        if inject_index is None:
            inject_index = int(torch.randint(1, self.n_latent, ()).item())
        first, second = expand(styles[0]), expand(styles[1])
        return torch.cat([first[:, :inject_index], second[:, inject_index:]], dim=1)

    def _noise(self, n, noise, randomize_noise):
        noise = list(noise) if noise is not None else [None, None]
        if len(noise) != 2:
            raise UserError(f'synthetic generator: noise must be a list of 2 tensors (fur, background), '
                            f'got {len(noise)}')
        fixed = (self.noise_fur, self.noise_background)
        shapes = (world.FUR_NOISE_SHAPE, world.BACKGROUND_NOISE_SHAPE)
        out = []
        for given, buffer, shape in zip(noise, fixed, shapes):
            if given is None:
                given = torch.randn(n, *shape, device=buffer.device) if randomize_noise else buffer
            out.append(given.to(buffer.dtype).expand(n, *shape))
        return out

    def _patterns(self, coords, noise):
        # Latent-driven pattern plus a small stochastic share; variance stays 1.
        out = []
        for layer, projection, field in zip(_PATTERN_LAYERS, (self.pattern_fur, self.pattern_background), noise):
            from_latent = (coords[:, layer] @ projection).view_as(field)
            out.append(math.sqrt(1 - NOISE_SHARE) * from_latent + math.sqrt(NOISE_SHARE) * field)
        return out

    # -- rendering ----------------------------------------------------------
    def world_params(self, latent, noise=None, randomize_noise=True):
        """World parameters (synthetic_world.params_from_factors) of W+ latents.

        latent: (N, n_latent, style_dim). Differentiable with respect to latent.
        """
        coords = self.style.coordinates(latent)
        index = torch.arange(world.NUM_FACTORS, device=latent.device)
        uniform = 0.5 * (1 + torch.erf(coords[:, self.factor_layer, index] / math.sqrt(2)))
        fur, background = self._patterns(coords, self._noise(latent.shape[0], noise, randomize_noise))
        deformation = None
        if self.factors.deformation > 0:
            entries = torch.tensor(_DEFORMATION_LAYERS, device=latent.device).repeat_interleave(
                DEFORMATION_FACTORS // len(_DEFORMATION_LAYERS))
            index = torch.arange(world.NUM_FACTORS, world.NUM_FACTORS + DEFORMATION_FACTORS, device=latent.device)
            deformation = 0.5 * (1 + torch.erf(coords[:, entries, index] / math.sqrt(2)))
        photo_u = scene_noise = None
        if self.factors.photo:
            photo_u = 0.5 * (1 + torch.erf(coords[:, self.photo_entry, self.photo_coordinate] / math.sqrt(2)))
            scene_noise = (coords[:, _SCENE_LAYER] @ self.pattern_scene).view(-1, *SCENE_NOISE_SHAPE)
        return world.params_from_factors(uniform, fur, background, self.factors, deformation, photo_u, scene_noise)

    def true_modes(self, z):
        """(N,) long: the mode (``--synthetic_modes``) of the face each z (N, style_dim) draws; 0 with one mode."""
        w_plus = self.style(z).unsqueeze(1).expand(-1, self.n_latent, -1)
        return self.world_params(w_plus, randomize_noise=False)['mode'].long()

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1, truncation_latent=None,
                input_is_latent=False, noise=None, randomize_noise=True, return_keypoints=False):
        """Render faces from latents.

        Args:
            styles: list of one or two tensors (or one tensor): z (N, style_dim),
                or with input_is_latent w (N, style_dim) or W+ (N, n_latent, style_dim).
                Two styles are mixed: entries [0, inject_index) from the first
                (inject_index random in [1, n_latent) when None).
            truncation, truncation_latent: each style becomes
                truncation_latent + truncation * (style - truncation_latent) when truncation < 1.
            noise, randomize_noise: see the module docstring.
            return_keypoints: also return the keypoints of the drawn faces.
        Returns:
            (images (N, 3, size, size) in [-1, 1], W+ (N, n_latent, style_dim) or None),
            plus keypoints (N, P, 3) (x, y pixels, visibility) when return_keypoints.
        """
        if torch.is_tensor(styles):
            styles = [styles]
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if truncation < 1:
            if truncation_latent is None:
                raise UserError('synthetic generator: truncation < 1 needs truncation_latent (e.g. mean_latent)')
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        latent = self._wplus(styles, inject_index)
        params = self.world_params(latent, noise, randomize_noise)
        images, keypoints = world.render(params, self.size, self.edge_softness)
        out = (images, latent if return_latents else None)
        return out + (keypoints,) if return_keypoints else out
