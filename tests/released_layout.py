"""Checkpoints in the released GANgealing layout, at full size, for the compatibility tests.

A released file holds ``t_ema`` (a similarity + flow transformer at flow_size
128, channel multiplier 0.5, saved at supersize 256, so with the input
downsampler's kernels for a factor of 2) and ``args``, an argparse.Namespace
of the training options. The weights here are random, with the warp heads
perturbed so that every stage moves the image.
"""
import argparse

import torch

from models import get_stn
from tests.official_schema import official_schema
from utils.checkpoint import save_checkpoint

RELEASED_SIZES = (128, 256, 512)


def released_stn(num_heads=1, seed=0):
    """A transformer of the released architecture (saved at supersize 256) with random warps."""
    torch.manual_seed(seed)
    stn = get_stn(['similarity', 'flow'], flow_size=128, supersize=256, channel_multiplier=0.5, num_heads=num_heads)
    with torch.no_grad():
        for name, param in stn.named_parameters():
            if 'warp_head.linear' in name or 'warp_head.flow_out.2' in name:
                param.normal_(0, 0.02)
    return stn.eval()


def write_released_checkpoint(path, num_heads=1, seed=0):
    """Save a checkpoint in the released layout at ``path``; returns (path, the transformer)."""
    stn = released_stn(num_heads, seed)
    state = stn.state_dict()
    schema = official_schema('t_ema transform=[similarity,flow] flow_size=128 supersize=256 '
                             f'channel_multiplier=0.5 num_heads={num_heads}')
    assert {key: list(value.shape) for key, value in state.items()} == schema
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=128, stn_channel_multiplier=0.5,
                              num_heads=num_heads, real_size=256, gen_size=256, padding_mode='border')
    save_checkpoint({'t_ema': state, 'args': args}, str(path))
    return str(path), stn
