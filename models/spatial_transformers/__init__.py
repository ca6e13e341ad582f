"""Spatial transformers: regress a similarity and/or dense flow warp from an
image and sample the image with it (anti-aliased).

``get_stn(['similarity', 'flow'], flow_size=128, supersize=256)`` builds the
transformer GANgealing trains; its state dict has the layout of the released
``t_ema`` weights, which load with ``load_state_dict``.
"""
from utils.errors import UserError
from models.spatial_transformers.composed import ComposedSTN
from models.spatial_transformers.geometry import apply_affine
from models.spatial_transformers.heads import FlowHead, SimilarityHead
from models.spatial_transformers.sampling import MipmapWarp, PlainWarp, TentDownsample
from models.spatial_transformers.state_dicts import describe_stn_config, infer_stn_config, trunk_width
from models.spatial_transformers.transformer import SpatialTransformer
from models.spatial_transformers.warp_checks import flow_total_variation, warp_exceeds_image_bounds

__all__ = [
    'get_stn', 'stn_from_state_dict', 'SpatialTransformer', 'ComposedSTN', 'SimilarityHead',
    'FlowHead', 'MipmapWarp', 'PlainWarp', 'TentDownsample', 'apply_affine',
    'flow_total_variation', 'warp_exceeds_image_bounds', 'infer_stn_config',
    'describe_stn_config', 'trunk_width',
]


def get_stn(transforms, flow_size, supersize, channel_multiplier=0.5, num_heads=1, **stn_kwargs):
    """Build a spatial transformer.

    Args:
        transforms: 'similarity', 'flow' or a list of them (similarity stages
            first, an optional flow stage last), e.g. ['similarity', 'flow'].
        flow_size: resolution warps are regressed at (power of two).
        supersize: resolution of input images (flow_size or an even multiple).
        channel_multiplier: trunk width factor (0.5 in the released models).
        num_heads: number of cluster heads.
        stn_kwargs: further SpatialTransformer arguments (blur_kernel,
            flow_downsample, antialias, max_channels).
    Returns:
        a SpatialTransformer for one transform, else a ComposedSTN.
    """
    if isinstance(transforms, str):
        transforms = [transforms]
    if not isinstance(transforms, (list, tuple)) or not transforms:
        raise UserError(f"transforms must be 'similarity', 'flow' or a list of them, "
                        f'got {transforms!r}')
    kwargs = dict(flow_size=flow_size, supersize=supersize,
                  channel_multiplier=channel_multiplier, num_heads=num_heads, **stn_kwargs)
    if len(transforms) == 1:
        return SpatialTransformer(transform=transforms[0], **kwargs)
    return ComposedSTN(transforms, **kwargs)


def stn_from_state_dict(state_dict, supersize=None, **stn_kwargs):
    """Build the transformer a state dict describes and load it.

    Args:
        state_dict: our or an official ``t_ema`` state dict.
        supersize: input resolution when the state dict does not record it
            (it does when it holds the input downsampler's kernels).
        stn_kwargs: overrides of the inferred configuration.
    Returns:
        the loaded transformer (on the CPU).
    """
    inferred = infer_stn_config(state_dict)
    config = {key: value for key, value in inferred.items() if value is not None}
    config.update(stn_kwargs)
    if None in inferred['transforms'] or 'flow_size' not in config:
        raise UserError(f'cannot tell the spatial transformer configuration from these weights '
                        f'({describe_stn_config(inferred)}); build it with get_stn and the '
                        f'training options instead')
    config.setdefault('supersize', supersize or config['flow_size'])
    stn = get_stn(**config)
    stn.load_state_dict(state_dict)
    return stn
