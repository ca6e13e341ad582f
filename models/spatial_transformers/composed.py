"""Chained spatial transformers: similarity stages followed by an optional flow stage.

Each stage regresses from the previous stage's output (at flow_size) and its
warp is composed with the previous ones, so the source is sampled only once.
"""
import torch
from torch import nn

from utils.errors import UserError
from models.spatial_transformers.base import STNBase, pack_outputs
from models.spatial_transformers.batching import repeat_rows, resolve_warp_policy
from models.spatial_transformers.geometry import (
    apply_affine, invert_affine, normalize_points, unnormalize_points)
from models.spatial_transformers.point_maps import nearest_grid_pixels
from models.spatial_transformers.sampling import check_padding_mode
from models.spatial_transformers.transformer import SpatialTransformer
from models.spatial_transformers.warp_checks import warp_exceeds_image_bounds


class ComposedSTN(STNBase):
    """Spatial transformers applied in sequence with composed warps.

    Args:
        transforms: list like ['similarity', 'flow']: any number of similarity
            stages, then at most one flow stage (last).
        stn_kwargs: SpatialTransformer arguments shared by every stage.
    """

    def __init__(self, transforms, **stn_kwargs):
        super().__init__()
        transforms = list(transforms)
        if 'flow' in transforms[:-1]:
            raise UserError(f'a flow stage can only come last in a composed spatial '
                            f'transformer, got transforms={transforms}')
        self.stns = nn.ModuleList(SpatialTransformer(transform=t, **stn_kwargs)
                                  for t in transforms)
        self.transforms = transforms
        self.is_flow = transforms[-1] == 'flow'
        self.num_heads = self.stns[0].num_heads
        self.stn_in_size = self.stns[0].stn_in_size
        self.config = dict(self.stns[0].config, transforms=transforms)

    @property
    def identity_flow(self):
        """(1, flow_size, flow_size, 2) identity grid of the flow stage."""
        return self.stns[-1].identity_flow

    def _run_stages(self, img, output_resolution=None, iters=1, padding_mode='border', alpha=None,
                    input_img_for_sampling=None, warp_policy='cartesian', stop_grad=False, num_stages=None):
        """Run the first ``num_stages`` stages (default: all); list over them of
        (images, grid, residual flow or matrix)."""
        padding_mode = check_padding_mode(padding_mode)
        source = img if input_img_for_sampling is None else input_img_for_sampling
        head_index = resolve_warp_policy(warp_policy, self.num_heads, source)
        num_images = img.shape[0]
        stages = self.stns[:num_stages or len(self.stns)]
        results = []
        current, warp = img, None
        for i, stn in enumerate(stages):
            last = i == len(stages) - 1
            result = stn.iterate(current, source,
                                  (output_resolution or self.stn_in_size) if last else self.stn_in_size,
                                  iters if i == 0 else 1, head_index, warp,
                                  alpha if last else None, stop_grad, padding_mode)[-1]
            results.append(result)
            current, _, warp = result
            if head_index is None and current.shape[0] != num_images:
                # Every head warped every image; later stages refine each row with its own head.
                head_index = torch.arange(self.num_heads, device=img.device).repeat(num_images)
                source = repeat_rows(source, current.shape[0])
        return results

    def forward(self, img, output_resolution=None, iters=1, return_warp=False, return_flow=False,
                padding_mode='border', alpha=None, input_img_for_sampling=None,
                warp_policy='cartesian', unfold=False, stop_grad=False, return_sim=False,
                return_intermediates=False, return_out_of_bounds=False, image_bounds=None, num_heads=None):
        """Warp images into the learned template through every stage.

        Arguments as SpatialTransformer.forward (``iters`` re-applies the first,
        similarity, stage; ``num_heads`` is checked against the model's), plus:
            return_sim: also return the first stage's output images.
            return_intermediates: return (list of images, list of grids), one
                per stage, instead.
        Returns:
            images (rows, 3, R, R) alone, or a tuple with the requested extras in
            the order warp, flow (residual flow (rows, F, F, 2) when the last
            stage is a flow, else the (rows, 2, 3) matrix), first-stage images,
            out-of-bounds flags.
        """
        self.check_num_heads(num_heads)
        results = self._run_stages(img, output_resolution, iters, padding_mode, alpha,
                                   input_img_for_sampling, warp_policy, stop_grad)
        if return_intermediates:
            return [r[0] for r in results], [r[1] for r in results]
        images, grid, flow = results[-1]
        outputs = [images] + [grid] * return_warp + [flow] * return_flow
        if return_sim:
            outputs.append(repeat_rows(results[0][0], images.shape[0]))
        if return_out_of_bounds:
            outputs.append(warp_exceeds_image_bounds(grid, image_bounds))
        return pack_outputs(outputs, img.shape[0], unfold)

    def similarity(self, img, iters=1, **forward_kwargs):
        """The composed warp of the similarity stages alone (the flow stage is not run).

        Args:
            img: (N, 3, S, S) images; ``iters`` re-applies the first stage;
                ``forward_kwargs`` as ``forward``.
        Returns:
            (rows, 2, 3) matrices mapping template positions to image positions
            in normalised coordinates.
        """
        if self.transforms[0] != 'similarity':
            raise UserError(f"this spatial transformer has no similarity stage (transforms={self.transforms})")
        count = self.transforms.index('flow') if self.is_flow else len(self.transforms)
        return self._run_stages(img, iters=iters, num_stages=count, **forward_kwargs)[-1][2]

    def forward_similarity(self, img, output_resolution=None, iters=1, **forward_kwargs):
        """Warp images with the similarity stages alone (the flow stage is not run).

        Args as ``forward`` (``iters`` re-applies the first stage).
        Returns:
            images (rows, 3, R, R), grid (rows, R, R, 2) and the composed
            (rows, 2, 3) matrix of the similarity stages.
        """
        if self.transforms[0] != 'similarity':
            raise UserError(f"this spatial transformer has no similarity stage (transforms={self.transforms})")
        count = self.transforms.index('flow') if self.is_flow else len(self.transforms)
        return self._run_stages(img, output_resolution, iters, num_stages=count, **forward_kwargs)[-1]

    def congeal_points(self, imgA, pointsA, output_resolution=None, iters=1,
                       normalize_input_points=True, unnormalize_output_points=False,
                       return_full=False, **forward_kwargs):
        """Map image points into the template.

        Args:
            imgA: (N, 3, S, S) images; pointsA (N, P, 2) pixels of the sampled
                image (normalised without ``normalize_input_points``).
            unnormalize_output_points: without a flow stage, return pixels of
                the sampled image's size instead of normalised positions.
        Returns:
            (rows, P, 2) template points: pixel indices on the flow_size grid
            when the last stage is a flow (nearest neighbour inversion of its
            residual warp after the closed-form inverse of the similarity),
            else normalised positions. With ``return_full`` (images, last
            stage's flow or matrix, points).
        """
        sampled = forward_kwargs.get('input_img_for_sampling')
        source_size = (imgA if sampled is None else sampled).shape[-1]
        results = self._run_stages(imgA, output_resolution, iters, **forward_kwargs)
        rows = results[-1][0].shape[0]
        points = repeat_rows(pointsA, rows, 'points').to(results[-1][1].dtype)
        if normalize_input_points:
            points = normalize_points(points, source_size, source_size)
        similarity_stages = [r for r, t in zip(results, self.transforms) if t == 'similarity']
        if similarity_stages:
            # The last similarity's matrix already contains the earlier ones.
            matrix = repeat_rows(similarity_stages[-1][2], rows)
            points = apply_affine(invert_affine(matrix), points)
        if self.is_flow:
            points = nearest_grid_pixels(self.identity_flow + results[-1][2], points)
        elif unnormalize_output_points:
            points = unnormalize_points(points, source_size, source_size)
        return (results[-1][0], results[-1][2], points) if return_full else points

    def _last_head(self):
        return self.stns[-1].warp_head
