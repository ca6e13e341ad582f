"""A synthetic video with exact keypoints: one face of the synthetic world moving smoothly.

One face is drawn from the world (``seed``); its pose (scale, rotation,
translation) and its gaze then follow slow sinusoids, each factor with its
own random frequency and phase, while its shape, colours, textures and
background stay fixed. Frame t's keypoints come from the same parameters as
its pixels, so they are exact. Used as ground truth for edit propagation on
video (``prepare_data.py --synthetic_video``, benchmarks/bench_video_propagation.py).
"""
import math

import torch

from utils.image_io import tensor_to_uint8
from synthetic_world.drawing import render
from synthetic_world.factors import (BACKGROUND_NOISE_SHAPE, FACTOR_SLICES, FUR_NOISE_SHAPE, NUM_FACTORS,
                                           WorldFactors, params_from_factors)

# Factors that move, as (group, first index inside the group, count); gaze is texture entries 5 and 6.
MOVING_FACTORS = (('scale', 0, 1), ('rotation', 0, 1), ('translation', 0, 2), ('texture', 5, 2))
AMPLITUDE = 0.35              # each moving factor swings over 0.5 +- AMPLITUDE of its [0, 1] range
PERIOD_FRAMES = (80, 200)     # range of the sinusoids' periods, in frames


def video_factors(frames, seed):
    """Uniform factors (frames, NUM_FACTORS) and the fixed noise fields of the video ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    base = torch.rand(1, NUM_FACTORS, generator=generator)
    fur_noise = torch.randn(1, *FUR_NOISE_SHAPE, generator=generator)
    background_noise = torch.randn(1, *BACKGROUND_NOISE_SHAPE, generator=generator)
    u = base.repeat(frames, 1)
    t = torch.arange(frames, dtype=torch.float32).unsqueeze(1)
    for group, offset, count in MOVING_FACTORS:
        first = FACTOR_SLICES[group].start + offset
        lo, hi = PERIOD_FRAMES
        period = lo + (hi - lo) * torch.rand(1, count, generator=generator)
        phase = 2 * math.pi * torch.rand(1, count, generator=generator)
        u[:, first:first + count] = 0.5 + AMPLITUDE * torch.sin(2 * math.pi * t / period + phase)
    return u, fur_noise, background_noise


def iter_synthetic_video(frames, size, seed, factors=None, batch_size=32):
    """Render the video ``seed`` batch by batch.

    Yields (uint8 numpy frames (b, S, S, 3), keypoints (b, NUM_KEYPOINTS, 3)
    float: x, y pixels at this size, visibility) for consecutive frames.
    """
    factors = (factors or WorldFactors()).validate()
    u, fur_noise, background_noise = video_factors(frames, seed)
    for start in range(0, frames, batch_size):
        part = u[start:start + batch_size]
        n = part.shape[0]
        params = params_from_factors(part, fur_noise.expand(n, -1, -1, -1), background_noise.expand(n, -1, -1, -1),
                                     factors)
        with torch.no_grad():
            images, keypoints = render(params, size)
        yield tensor_to_uint8(images), keypoints.cpu()
