"""Loading spatial transformer weights, including official ``t_ema`` state dicts.

Fixed buffers (blur kernels, the tent downsampler's kernels, the homogeneous
row) are constants of the architecture: incoming values are ignored and
missing ones are filled from the model, so state dicts with or without them
load. Every learned tensor must be present with the right shape; otherwise a
UserError names the configuration the weights come from and the model's.
"""
import re

import torch

from utils.errors import WeightsMismatchError

# Keys older official checkpoints may carry that no current model uses.
_OBSOLETE_SUFFIXES = ('warp_head.rebias',)
# The input downsampler's kernels depend on the input size alone: a model built
# for inputs at flow_size has no downsampler, yet the released checkpoints (saved
# at a larger size) carry its kernels, so they are dropped wherever they appear.
_SIZE_DEPENDENT_SUFFIXES = ('input_downsample.kernel_horz', 'input_downsample.kernel_vert')


def _stage_prefixes(state_dict):
    stages = sorted({int(m.group(1)) for key in state_dict
                     for m in [re.match(r'stns\.(\d+)\.', key)] if m})
    return [f'stns.{i}.' for i in stages] if stages else ['']


def infer_stn_config(state_dict):
    """Best-effort configuration of the transformer a state dict was saved from.

    Returns:
        dict with transforms (list of str, None where unrecognised),
        flow_size, supersize, channel_multiplier and num_heads; a value is
        None where the state dict does not determine it.
    """
    transforms, num_heads, flow_size, supersize, multiplier = [], None, None, None, None
    for prefix in _stage_prefixes(state_dict):
        linear = state_dict.get(prefix + 'warp_head.linear.weight')
        flow_out = state_dict.get(prefix + 'warp_head.flow_out.2.weight')
        if linear is not None:
            transforms.append('similarity')
            num_heads = linear.shape[0] // 4
            blocks = {m.group(1) for key in state_dict
                      for m in [re.match(re.escape(prefix) + r'convs\.(\d+)\.conv1\.', key)] if m}
            flow_size = 2 ** (len(blocks) + 2)
        elif flow_out is not None:
            transforms.append('flow')
            num_heads = flow_out.shape[0] // 2
        else:
            transforms.append(None)
    prefix = _stage_prefixes(state_dict)[0]
    first_conv = state_dict.get(prefix + 'convs.0.0.weight')
    if flow_size is not None and flow_size >= 64 and first_conv is not None:
        multiplier = first_conv.shape[0] * flow_size / 16384
    kernel = state_dict.get(prefix + 'input_downsample.kernel_horz')
    if flow_size is not None and kernel is not None:
        supersize = flow_size * kernel.shape[-1] // 2  # the tent filter has 2 * factor taps
    return dict(transforms=transforms, flow_size=flow_size, supersize=supersize,
                channel_multiplier=multiplier, num_heads=num_heads)


def trunk_width(state_dict):
    """Width of the transformer's low-resolution layers (its final convolution's
    output channels: the widest layer, 512 in released models), or None when
    the state dict does not show it."""
    if not isinstance(state_dict, dict):
        return None
    for key, value in state_dict.items():
        if re.search(r'(^|\.)final_conv\.0\.weight$', key) and torch.is_tensor(value):
            return int(value.shape[0])
    return None


def describe_stn_config(config):
    """One-line description of a configuration dict ('?' for unknown values)."""
    def show(value):
        return '?' if value is None else repr(value)
    transforms = [t if t is not None else '?' for t in config.get('transforms') or []]
    return (f"transforms={transforms}, flow_size={show(config.get('flow_size'))}, "
            f"channel_multiplier={show(config.get('channel_multiplier'))}, "
            f"num_heads={show(config.get('num_heads'))}")


def _strip_wrapper_prefix(state_dict):
    """Remove the 'module.' prefix DistributedDataParallel adds to every key."""
    if state_dict and all(key.startswith('module.') for key in state_dict):
        return {key[len('module.'):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def prepare_state_dict(model, state_dict, strict=True):
    """Validate ``state_dict`` against ``model`` and fill in its fixed buffers.

    Args:
        model: a spatial transformer with a ``config`` dict.
        state_dict: mapping of names to tensors (ours or official).
        strict: False only drops fixed buffers and obsolete keys and checks nothing.
    Returns:
        a state dict with exactly the model's keys (with ``strict``).
    Raises:
        UserError if a learned tensor is missing, unexpected or mis-shaped.
    """
    state_dict = _strip_wrapper_prefix(state_dict)
    fixed = {name for name, _ in model.named_buffers()}
    incoming = {key: value for key, value in state_dict.items()
                if key not in fixed and not key.endswith(_OBSOLETE_SUFFIXES + _SIZE_DEPENDENT_SUFFIXES)}
    if not strict:
        return incoming
    own = model.state_dict()
    learned = {key: value for key, value in own.items() if key not in fixed}
    missing = sorted(learned.keys() - incoming.keys())
    unexpected = sorted(incoming.keys() - learned.keys())
    mismatched = sorted(key for key in learned.keys() & incoming.keys()
                        if tuple(incoming[key].shape) != tuple(learned[key].shape))
    if missing or unexpected or mismatched:
        problems = []
        for label, keys in (('missing', missing), ('unexpected', unexpected),
                            ('wrong shape', mismatched)):
            if keys:
                more = f' and {len(keys) - 3} more' if len(keys) > 3 else ''
                problems.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise WeightsMismatchError(
            f'the spatial transformer weights do not fit this model: they come from a '
            f'transformer with {describe_stn_config(infer_stn_config(state_dict))}, but this '
            f'model has {describe_stn_config(model.config)} ({"; ".join(problems)})')
    completed = {key: value for key, value in own.items() if key in fixed}
    completed.update({key: incoming[key] for key in learned})
    return completed

