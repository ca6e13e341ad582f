"""A single spatial transformer: one trunk and one warp head (similarity or flow)."""
import torch

from utils.errors import UserError
from utils.precision import at_least_float32, autocast, full_precision
from models.spatial_transformers.base import STNBase, pack_outputs
from models.spatial_transformers.batching import alpha_per_row, repeat_rows, resolve_warp_policy
from models.spatial_transformers.geometry import (
    apply_affine, invert_affine, normalize_points, unnormalize_points)
from models.spatial_transformers.heads import FlowHead, SimilarityHead
from models.spatial_transformers.point_maps import nearest_grid_pixels
from models.spatial_transformers.sampling import TentDownsample, check_padding_mode, tent_downsample
from models.spatial_transformers.trunk import build_convs, build_final_layers
from models.spatial_transformers.warp_checks import warp_exceeds_image_bounds

TRANSFORMS = ('similarity', 'flow')
FLOW_DOWNSAMPLE = 8  # the flow head regresses at flow_size / 8 and upsamples (the original's choice)


def _is_power_of_two(value):
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


class STNConfigError(UserError):
    """A configuration no spatial transformer can be built with.

    ``template`` names the arguments in braces (e.g. '{flow_size} must not exceed
    {supersize}') and ``values`` gives them; ``render(name_of)`` writes each
    argument as ``name_of(argument) (value)``, so the option layer can speak of
    its own flags while the message here speaks of arguments.
    """

    def __init__(self, template, **values):
        self.template, self.values = template, values
        super().__init__(self.render(lambda argument: argument))

    def render(self, name_of):
        return self.template.format(**{key: f'{name_of(key)} ({value})' for key, value in self.values.items()})


def validate_stn_args(transform, flow_size, supersize, num_heads, flow_downsample,
                      channel_multiplier):
    """Raise STNConfigError for a configuration no spatial transformer can be built with."""
    if transform not in TRANSFORMS:
        raise STNConfigError(f"unknown transform '{transform}'; choose from {', '.join(TRANSFORMS)}")
    smallest = 2 * flow_downsample if transform == 'flow' else 4
    if not _is_power_of_two(flow_size) or flow_size < smallest:
        raise STNConfigError(f'{{flow_size}} must be a power of two of at least {smallest} for a '
                             f'{transform} transformer', flow_size=flow_size)
    if transform == 'flow' and not _is_power_of_two(flow_downsample):
        raise STNConfigError('{flow_downsample} must be a power of two', flow_downsample=flow_downsample)
    if not isinstance(supersize, int) or supersize < flow_size:
        raise STNConfigError('{flow_size} must not exceed {supersize}', flow_size=flow_size, supersize=supersize)
    ratio = supersize // flow_size
    if supersize % flow_size or (ratio > 1 and ratio % 2):
        raise STNConfigError('{supersize} must equal {flow_size} or be an even multiple of it',
                             supersize=supersize, flow_size=flow_size)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise STNConfigError('{num_heads} must be a positive integer', num_heads=num_heads)
    if not channel_multiplier > 0:
        raise STNConfigError('{channel_multiplier} must be positive', channel_multiplier=channel_multiplier)


class SpatialTransformer(STNBase):
    """Regresses a warp from a flow_size copy of the input and applies it.

    Args:
        flow_size: resolution the warp is regressed at (and the default
            output resolution).
        supersize: resolution of the input images (>= flow_size); larger inputs
            are tent-filtered down for regression.
        channel_multiplier: width of the high-resolution trunk layers.
        blur_kernel: FIR kernel of the trunk's downsampling blocks.
        num_heads: number of cluster heads K.
        transform: 'similarity' or 'flow'.
        flow_downsample: the flow is regressed at flow_size / flow_downsample.
        antialias: anti-aliased (mip-map) sampling.
        max_channels: width of the low-resolution layers (512 in the released
            models; smaller values make small test models).
    """

    def __init__(self, flow_size, supersize, channel_multiplier=0.5, blur_kernel=(1, 3, 3, 1),
                 num_heads=1, transform='similarity', flow_downsample=FLOW_DOWNSAMPLE, antialias=True,
                 max_channels=512):
        super().__init__()
        validate_stn_args(transform, flow_size, supersize, num_heads, flow_downsample,
                          channel_multiplier)
        self.transform = transform
        self.is_flow = transform == 'flow'
        self.stn_in_size = flow_size
        self.supersize = supersize
        self.num_heads = num_heads
        self.trunk_precision = 'fp32'  # see STNBase.set_precision
        self.config = dict(transforms=[transform], flow_size=flow_size, supersize=supersize,
                           channel_multiplier=channel_multiplier, num_heads=num_heads)
        if supersize > flow_size:
            self.input_downsample = TentDownsample(supersize // flow_size)
        self.convs, trunk_channels, _ = build_convs(flow_size, channel_multiplier, self.is_flow,
                                                    flow_downsample, blur_kernel, max_channels)
        self.final_conv, final_linear, width = build_final_layers(trunk_channels, self.is_flow,
                                                                  max_channels)
        if final_linear is not None:
            self.final_linear = final_linear
        if self.is_flow:
            self.warp_head = FlowHead(width, flow_size, num_heads, flow_downsample, antialias)
        else:
            self.warp_head = SimilarityHead(width, num_heads, antialias)

    @property
    def identity_flow(self):
        """(1, flow_size, flow_size, 2) identity grid (flow transformers only)."""
        return self.warp_head.identity_flow

    # ----- warping -----

    def regression_input(self, img):
        """(N, 3, S, S) images -> (N, 3, flow_size, flow_size) for the trunk."""
        size = img.shape[-1]
        if img.shape[-2] != size:
            raise UserError(f'spatial transformers take square images, got '
                            f'{img.shape[-2]}x{size}; pad or crop them to a square')
        if size == self.stn_in_size:
            return img
        if size == self.supersize and hasattr(self, 'input_downsample'):
            return self.input_downsample(img)
        factor = size // self.stn_in_size
        if size % self.stn_in_size == 0 and factor % 2 == 0:
            return tent_downsample(img, factor)
        raise UserError(f'input images are {size}x{size}, but this spatial transformer '
                        f'regresses warps at {self.stn_in_size}x{self.stn_in_size}; resize them '
                        f'to {self.stn_in_size} or an even multiple of it (e.g. {self.supersize})')

    def features(self, img):
        """Trunk features, float32: (N, D) for similarity, (N, D, h, w) for flow.

        The trunk runs at ``trunk_precision`` (see ``set_precision``) or under an
        enclosing autocast.
        """
        with autocast(self.trunk_precision, img.device):
            out = self.final_conv(self.convs(self.regression_input(img)))
            if not self.is_flow:
                out = self.final_linear(out.flatten(1))
        return at_least_float32(out)

    def _stage(self, img, source, output_resolution, head_index, base_warp, alpha, stop_grad,
               padding_mode):
        """One regression and warp: (images, grid, residual flow or matrix)."""
        rows = img.shape[0] * (self.num_heads if head_index is None else 1)
        features = self.features(img)
        # The warp itself is float32 whatever the trunk ran at: bfloat16 would round
        # sampling positions to about half a pixel at 256 px.
        with full_precision(img.device):
            return self.warp_head(at_least_float32(source), features, output_resolution,
                                  head_index=head_index, base_warp=base_warp,
                                  alpha=alpha_per_row(alpha, rows, img), stop_grad=stop_grad,
                                  padding_mode=padding_mode)

    def iterate(self, img, source, output_resolution, iters, head_index, base_warp, alpha,
                 stop_grad, padding_mode, intermediate_resolution=None):
        """Apply the transformer ``iters`` times to its own output, composing warps.

        Returns:
            list over iterations of (images, grid, residual flow or matrix);
            after the first iteration every row keeps the head that made it.
        """
        if iters < 1:
            raise UserError(f'iters must be at least 1, got {iters}')
        if iters > 1 and self.is_flow:
            raise UserError('only similarity transformers can be iterated (iters > 1)')
        intermediate_resolution = intermediate_resolution or self.stn_in_size
        results = []
        current, warp = img, base_warp
        for iteration in range(iters):
            last = iteration == iters - 1
            result = self._stage(current, source, output_resolution if last else intermediate_resolution,
                                 head_index, warp, alpha if last else None, stop_grad, padding_mode)
            results.append(result)
            current, _, warp = result
            if head_index is None and self.num_heads > 1:
                head_index = torch.arange(self.num_heads, device=img.device).repeat(img.shape[0])
                source = repeat_rows(source, current.shape[0])
        return results

    def forward(self, img, output_resolution=None, iters=1, return_warp=False, return_flow=False,
                padding_mode='border', alpha=None, input_img_for_sampling=None,
                warp_policy='cartesian', unfold=False, stop_grad=False, base_warp=None,
                return_out_of_bounds=False, image_bounds=None, return_intermediates=False,
                intermediate_output_resolution=None, num_heads=None):
        """Warp images into the learned template.

        Args:
            img: (N, 3, S, S) images in [-1, 1] (S = flow_size, supersize or an
                even multiple of flow_size) to regress the warp from.
            output_resolution: side R of the output (default flow_size); the
                warp is resized, not the warped image.
            iters: re-apply the similarity to its own output, composing warps.
            return_warp: also return the sampling grid (rows, R, R, 2).
            return_flow: also return the residual flow (rows, F, F, 2) of a flow
                transformer or the (rows, 2, 3) matrix of a similarity one.
            padding_mode: 'border', 'zeros' or 'reflection'.
            alpha: blend of the warp toward the identity (number or (N,)).
            input_img_for_sampling: (N, 3, H, W) image to sample instead of
                ``img`` (e.g. a higher-resolution copy).
            warp_policy: 'cartesian' (every head warps every image; rows
                ordered image-major: row n * K + k is image n, head k), (N,)
                head indices, (N, S) head scores or a classifier module.
            unfold: return rows as (N, rows per image, ...).
            stop_grad: no gradient into the warp regression.
            base_warp: (N or rows, 2, 3) similarity to compose with.
            return_out_of_bounds: also return (rows,) bool, True where the warp
                reads beyond the image content (see warp_exceeds_image_bounds).
            image_bounds: (N, 2) original (height, width) for that check.
            return_intermediates: return (list of images, list of grids), one
                per iteration, instead.
            intermediate_output_resolution: output size of non-final iterations.
            num_heads: the number of heads the caller expects (a released
                model's test settings carry it); a UserError if it differs.
        Returns:
            images (rows, 3, R, R) alone, or a tuple with the requested extras in
            the order warp, flow, out-of-bounds.
        """
        self.check_num_heads(num_heads)
        padding_mode = check_padding_mode(padding_mode)
        source = img if input_img_for_sampling is None else input_img_for_sampling
        head_index = resolve_warp_policy(warp_policy, self.num_heads, source)
        results = self.iterate(img, source, output_resolution or self.stn_in_size, iters,
                                head_index, base_warp, alpha, stop_grad, padding_mode,
                                intermediate_output_resolution)
        if return_intermediates:
            return [r[0] for r in results], [r[1] for r in results]
        images, grid, flow = results[-1]
        outputs = [images] + [grid] * return_warp + [flow] * return_flow
        if return_out_of_bounds:
            outputs.append(warp_exceeds_image_bounds(grid, image_bounds))
        return pack_outputs(outputs, img.shape[0], unfold)

    # ----- points -----

    def congeal_points(self, imgA, pointsA, normalize_input_points=True,
                       unnormalize_output_points=False, output_resolution=None, iters=1,
                       input_img_for_sampling=None, return_full=False, **forward_kwargs):
        """Map image points into the template (inverse of the sampling warp).

        Args:
            imgA: (N, 3, S, S) images.
            pointsA: (N, P, 2) points (x, y): pixels of the sampled image, or
                normalised when ``normalize_input_points`` is False.
            unnormalize_output_points: similarity only: return pixels of the
                sampled image's size instead of normalised positions.
        Returns:
            (rows, P, 2) template points: for similarity normalised (closed-form
            inverse), for flow pixel indices on the flow_size grid (nearest
            neighbour). With ``return_full`` (images, residual flow or matrix,
            points).
        """
        source_size = (imgA if input_img_for_sampling is None else input_img_for_sampling).shape[-1]
        images, _, flow = self.forward(imgA, return_warp=True, return_flow=True,
                                       output_resolution=output_resolution, iters=iters,
                                       input_img_for_sampling=input_img_for_sampling,
                                       **forward_kwargs)
        points = repeat_rows(pointsA, flow.shape[0], 'points').to(flow.dtype)
        if normalize_input_points:
            points = normalize_points(points, source_size, source_size)
        if self.is_flow:
            points = nearest_grid_pixels(self.identity_flow + flow, points)
        else:
            points = apply_affine(invert_affine(flow), points)
            if unnormalize_output_points:
                points = unnormalize_points(points, source_size, source_size)
        return (images, flow, points) if return_full else points

    def _last_head(self):
        return self.warp_head

    def _points_warp(self, warp, output_resolution):
        # A similarity maps template points in closed form; a flow through its grid.
        return warp if warp.dim() == 3 else self.warp_grid(warp, output_resolution)

    def _uncongeal_template_size(self, image_size):
        # Similarity pixel templates are image-sized; flow ones are on the flow_size grid.
        return self.stn_in_size if self.is_flow else image_size
