"""Warp heads: turn trunk features into a warp and apply it.

Both heads start as the identity warp (their last layer is zero-initialised)
and keep one set of outputs per cluster head. Selection between heads:
``head_index`` None warps every input with every head (rows image-major),
an (N,) long tensor warps image n with head ``head_index[n]`` only.
"""
import torch
from torch import nn
import torch.nn.functional as F

from models.layers import EqualConv2d
from models.spatial_transformers.batching import repeat_rows
from models.spatial_transformers.flow_upsampling import convex_upsample
from models.spatial_transformers.geometry import (
    apply_affine, compose_affine, identity_grid, resize_grid, similarity_matrices)
from models.spatial_transformers.sampling import MipmapWarp, PlainWarp


def make_warper(antialias):
    """The sampler heads use: anti-aliased (mip-map) or plain bilinear."""
    return MipmapWarp(max_num_levels=3.5) if antialias else PlainWarp()


def _select(per_head, head_index):
    """(N, K, ...) -> (N * K, ...) for all heads, or (N, ...) for the chosen ones."""
    if head_index is None:
        return per_head.reshape(-1, *per_head.shape[2:])
    return per_head[torch.arange(per_head.shape[0], device=per_head.device), head_index]


class SimilarityHead(nn.Module):
    """Regresses rotation, uniform scale and shift per cluster head.

    Args:
        in_features: width D of the (N, D) features.
        num_heads: number of cluster heads K.
        antialias: sample with the mip-map sampler.
    """

    num_warp_params = 4

    def __init__(self, in_features, num_heads=1, antialias=True):
        super().__init__()
        self.num_heads = num_heads
        # Parameters are laid out parameter-major: entry p * K + k is parameter p of head k.
        self.linear = nn.Linear(in_features, self.num_warp_params * num_heads)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.warper = make_warper(antialias)
        # Homogeneous row kept only because official checkpoints store it.
        self.register_buffer('one_hot', torch.tensor([0., 0., 1.]).view(1, 1, 1, 3))

    def predict(self, features, head_index=None):
        """(N, D) features -> (N * K or N, 2, 3) similarity matrices."""
        params = self.linear(features).reshape(features.shape[0], self.num_warp_params,
                                               self.num_heads)
        return similarity_matrices(_select(params.transpose(1, 2), head_index))

    def forward(self, source, features, output_resolution, head_index=None, base_warp=None,
                alpha=None, stop_grad=False, padding_mode='border'):
        """Predict and apply the similarity warp.

        Args:
            source: (N or rows, C, H, W) images to sample.
            features: (N, D) regression features.
            output_resolution: side of the output images.
            head_index: None or (N,) head indices (see module docstring).
            base_warp: optional (N or rows, 2, 3) warp to compose with (applied
                after this one, i.e. grid = base(this(identity))).
            alpha: optional (rows,) blend toward the identity (0 = identity).
            stop_grad: block gradients into the warp (the graph stays connected).
        Returns:
            images (rows, C, R, R), grid (rows, R, R, 2), matrices (rows, 2, 3).
        """
        matrix = self.predict(features, head_index)
        rows = matrix.shape[0]
        if base_warp is not None:
            matrix = compose_affine(repeat_rows(base_warp, rows, 'base_warp'), matrix)
        if alpha is not None:
            identity = torch.eye(2, 3, device=matrix.device, dtype=matrix.dtype)
            matrix = identity.lerp(matrix, alpha.view(-1, 1, 1))
        if stop_grad:
            matrix = matrix.detach() + 0 * matrix  # keeps every parameter in the graph (DDP)
        source = repeat_rows(source, rows, 'source images')
        grid = F.affine_grid(matrix, (rows, source.shape[1], output_resolution, output_resolution),
                             align_corners=False)
        return self.warper(source, grid, padding_mode), grid, matrix


class FlowHead(nn.Module):
    """Regresses a residual flow at 1 / flow_downsample of flow_size and upsamples it
    with learned convex weights.

    Args:
        channels: channels of the (N, C, h, w) feature map (h = flow_size / flow_downsample).
        flow_size: side of the full-resolution flow.
        num_heads: number of cluster heads K.
        flow_downsample: upsampling factor from the coarse to the full flow.
        antialias: sample with the mip-map sampler.
    """

    def __init__(self, channels, flow_size, num_heads=1, flow_downsample=8, antialias=True):
        super().__init__()
        self.num_heads = num_heads
        self.flow_downsample = flow_downsample
        self.flow_out = nn.Sequential(EqualConv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                      EqualConv2d(channels, 2 * num_heads, 3, padding=1))
        nn.init.zeros_(self.flow_out[-1].weight)
        nn.init.zeros_(self.flow_out[-1].bias)
        weights_per_cell = 9 * flow_downsample ** 2
        self.mask_out = nn.Sequential(
            EqualConv2d(channels, channels, 3, padding=1), nn.ReLU(),
            EqualConv2d(channels, weights_per_cell * num_heads, 3, padding=1))
        self.warper = make_warper(antialias)
        self.register_buffer('identity_flow', identity_grid(flow_size), persistent=False)

    def predict(self, features, head_index=None):
        """(N, C, h, w) features -> (N * K or N, flow_size, flow_size, 2) residual flow."""
        n, _, h, w = features.shape
        coarse = self.flow_out(features).reshape(n, self.num_heads, 2, h, w)
        logits = self.mask_out(features).reshape(n, self.num_heads, -1, h, w)
        coarse = _select(coarse, head_index).permute(0, 2, 3, 1)
        return convex_upsample(coarse, _select(logits, head_index), self.flow_downsample)

    def forward(self, source, features, output_resolution, head_index=None, base_warp=None,
                alpha=None, stop_grad=False, padding_mode='border'):
        """Predict and apply identity + residual flow (composed after ``base_warp``).

        Arguments as SimilarityHead.forward, with (N, C, h, w) features.
        Returns:
            images (rows, C, R, R), grid (rows, R, R, 2) and the residual flow
            (rows, flow_size, flow_size, 2).
        """
        delta_flow = self.predict(features, head_index)
        rows = delta_flow.shape[0]
        grid = self.identity_flow + delta_flow
        if base_warp is not None:
            grid = apply_affine(repeat_rows(base_warp, rows, 'base_warp'), grid)
        if alpha is not None:
            grid = self.identity_flow.lerp(grid, alpha.view(-1, 1, 1, 1))
        grid = resize_grid(grid, output_resolution)
        if stop_grad:
            grid = grid.detach() + 0 * grid  # keeps every parameter in the graph (DDP)
        source = repeat_rows(source, rows, 'source images')
        return self.warper(source, grid, padding_mode), grid, delta_flow
