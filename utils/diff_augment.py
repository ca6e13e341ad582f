"""Differentiable augmentation with an adaptive probability (ADA-style) for GAN training on small datasets.

The discriminator sees real and generated images through the same random
transforms, each applied to each image with probability ``p``; because
every transform is differentiable the generator learns through them, and
because they are invertible in distribution (p < ~0.8) they do not leak into
the generated images. ``AdaptiveAugment`` raises ``p`` when the
discriminator grows too sure of the real images (the mean sign of its real
logits above ``target``) and lowers it otherwise.

The transform set is a small subset of ADA's "bgc" pipeline: horizontal
flip, integer translation (up to 1/8 of the size, reflected borders),
brightness, contrast and saturation. Everything works on the whole batch at
once (per-sample parameters, no Python loop over images).
"""
import math

import torch

__all__ = ['augment', 'AdaptiveAugment']

TRANSLATE_FRACTION = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_LOG2_STD = 0.5
SATURATION_LOG2_STD = 1.0


def _chosen(n, p, device, generator=None):
    """(N,) bool: which samples get a transform."""
    return torch.rand(n, device=device, generator=generator) < p


def _translate(images, shift_x, shift_y):
    """Shift each image by its integer (shift_x, shift_y) pixels, reflecting at the borders.

    Args:
        images: (N, C, H, W); shift_x, shift_y: (N,) long.
    """
    n, c, h, w = images.shape
    ys = torch.arange(h, device=images.device).view(1, h) - shift_y.view(n, 1)
    xs = torch.arange(w, device=images.device).view(1, w) - shift_x.view(n, 1)

    def reflect(index, length):  # ... 2 1 | 0 1 2 ... L-1 | L-2 ... (shifts below L)
        index = index.abs()
        return torch.where(index >= length, 2 * (length - 1) - index, index)

    ys, xs = reflect(ys, h), reflect(xs, w)
    rows = images.gather(2, ys.view(n, 1, h, 1).expand(n, c, h, w))
    return rows.gather(3, xs.view(n, 1, 1, w).expand(n, c, h, w))


def augment(images, p, generator=None):
    """Apply the transforms, each to each image with probability ``p``.

    Args:
        images: (N, 3, H, W) in about [-1, 1]; gradients flow through.
        p: probability in [0, 1]; 0 returns ``images`` unchanged.
        generator: optional torch.Generator for the random draws.
    Returns:
        (N, 3, H, W).
    """
    if p <= 0:
        return images
    n, _, h, w = images.shape
    device = images.device

    def draw(*shape):
        return torch.rand(*shape, device=device, generator=generator)

    def normal(*shape):
        return torch.randn(*shape, device=device, generator=generator)

    flip = _chosen(n, p, device, generator).view(n, 1, 1, 1)
    images = torch.where(flip, images.flip(3), images)

    move = _chosen(n, p, device, generator)
    # Uniform integer shifts in [-max, max], 0 where not chosen.
    max_x, max_y = int(round(w * TRANSLATE_FRACTION)), int(round(h * TRANSLATE_FRACTION))
    shift_x = ((draw(n) * 2 - 1) * max_x).round().long() * move
    shift_y = ((draw(n) * 2 - 1) * max_y).round().long() * move
    if max_x or max_y:
        images = _translate(images, shift_x, shift_y)

    brightness = normal(n) * BRIGHTNESS_STD * _chosen(n, p, device, generator)
    images = images + brightness.view(n, 1, 1, 1)

    contrast = torch.exp2(normal(n) * CONTRAST_LOG2_STD * _chosen(n, p, device, generator))
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + (images - mean) * contrast.view(n, 1, 1, 1)

    saturation = torch.exp2(normal(n) * SATURATION_LOG2_STD * _chosen(n, p, device, generator))
    grey = images.mean(dim=1, keepdim=True)
    return grey + (images - grey) * saturation.view(n, 1, 1, 1)


class AdaptiveAugment:
    """The augmentation probability p, tuned from the discriminator's real logits.

    Every ``every`` iterations p moves by sign(r_t - target) * (images seen) /
    ``length``, where r_t = E[sign(D(real))] over those iterations: p can go
    from 0 to 1 in ``length`` images.

    Args:
        target: r_t the tuning aims at (0.6 in ADA).
        length: images over which p can change by 1.
        every: iterations between updates.
        p: starting probability.
    """

    def __init__(self, target=0.6, length=500_000, every=256, p=0.0):
        self.target, self.length, self.every = target, length, every
        self.p = float(p)
        self.sign_sum, self.count, self.iterations = 0.0, 0, 0
        self.r_t = 0.0

    def update(self, real_logits):
        """Record a batch's real logits (N, 1); every ``every`` calls adjust and return p."""
        signs = torch.sign(real_logits.detach().float())
        self.sign_sum += float(signs.sum())
        self.count += signs.numel()
        self.iterations += 1
        if self.iterations >= self.every:
            self.r_t = self.sign_sum / max(self.count, 1)
            step = math.copysign(1.0, self.r_t - self.target) * self.count / self.length
            self.p = min(1.0, max(0.0, self.p + step))
            self.sign_sum, self.count, self.iterations = 0.0, 0, 0
        return self.p

    def state_dict(self):
        return {'p': self.p, 'sign_sum': self.sign_sum, 'count': self.count, 'iterations': self.iterations,
                'r_t': self.r_t}

    def load_state_dict(self, state):
        self.p, self.sign_sum = float(state['p']), float(state['sign_sum'])
        self.count, self.iterations, self.r_t = int(state['count']), int(state['iterations']), float(state['r_t'])
