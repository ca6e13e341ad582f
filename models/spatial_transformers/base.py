"""Behaviour shared by single and composed spatial transformers: weight loading,
output packing, mirror selection by flow smoothness, point normalisation."""
import torch
from torch import nn
import torch.nn.functional as F

from utils.errors import UserError
from utils.precision import resolve_precision
from models.spatial_transformers.batching import repeat_rows
from models.spatial_transformers.geometry import (
    convert_points, normalize_points, resize_grid, unnormalize_points)
from models.spatial_transformers.point_maps import map_template_points
from models.spatial_transformers.sampling import check_padding_mode
from models.spatial_transformers.state_dicts import prepare_state_dict
from models.spatial_transformers.warp_checks import flow_total_variation


def pack_outputs(values, num_images, unfold):
    """Return a single tensor or a tuple; with ``unfold`` split the rows of each
    tensor into (num_images, rows per image, ...)."""
    if unfold:
        values = [v.reshape(num_images, -1, *v.shape[1:]) for v in values]
    return values[0] if len(values) == 1 else tuple(values)


def mirror_points(points, mirrored, width, permutation=None):
    """Mirror keypoints of the images flagged in ``mirrored``.

    Args:
        points: (N, P, D) with x in column 0 (pixels in [0, width - 1]); other
            columns (y, visibility) are kept.
        mirrored: (N,) bool.
        width: image width in pixels.
        permutation: optional length-P sequence: entry i is the index of the
            keypoint that becomes keypoint i after a left/right mirror.
    Returns:
        (N, P, D) points.
    """
    flipped = points.clone()
    flipped[..., 0] = width - 1 - points[..., 0]
    if permutation is not None:
        flipped = flipped[:, torch.as_tensor(permutation, dtype=torch.long, device=points.device)]
    return torch.where(mirrored.view(-1, 1, 1), flipped, points)


class STNBase(nn.Module):
    """Common methods; subclasses set ``config``, ``is_flow``, ``num_heads``,
    ``stn_in_size`` and implement ``forward``."""

    normalize = staticmethod(normalize_points)
    unnormalize = staticmethod(unnormalize_points)
    convert = staticmethod(convert_points)

    def set_precision(self, precision):
        """Run the trunks' convolutions at ``precision`` ('auto', 'fp32' or 'bf16', see
        utils.precision) from now on; the warp heads stay float32. Returns ``self``."""
        resolve_precision(precision, 'cpu')  # refuses unknown names now, not at the first forward pass
        for module in self.modules():
            if hasattr(module, 'trunk_precision'):
                module.trunk_precision = precision
        return self

    def check_num_heads(self, num_heads):
        """Refuse a ``num_heads`` (given to ``forward``, e.g. with a released model's test
        settings) other than this model's; None checks nothing."""
        if num_heads is not None and int(num_heads) != self.num_heads:
            raise UserError(f'these settings are for a transformer with {num_heads} heads, and this one has '
                            f'{self.num_heads}; build it with num_heads={num_heads} (get_stn(..., '
                            f'num_heads={num_heads})) before loading those weights')

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Load our or official weights (fixed buffers optional, see state_dicts).

        With ``strict`` a mismatch raises a UserError naming the checkpoint's
        and this model's configurations.
        """
        return super().load_state_dict(prepare_state_dict(self, state_dict, strict),
                                       strict=strict, assign=assign)

    # ----- warps kept and reused without the network -----
    #
    # A transformer's warp of a batch is fully described by the last stage's
    # own output: the sampling grid at flow_size of a flow stage (before any
    # resizing to the output resolution), or the composed (2, 3) matrix of a
    # similarity stage. Every output resolution's grid, the congealed images
    # and the template-to-image point map follow from it exactly, so callers
    # can run the network once and keep that tensor.

    def _last_head(self):
        """The warp head of the last stage (its sampler warps the images)."""
        raise NotImplementedError

    def compute_warp(self, img, output_resolution=None, iters=1, return_congealed_img=False,
                     **forward_kwargs):
        """Run the network once and return the batch's warp (see ``warp_grid``).

        Args:
            img: (N, 3, S, S) images; arguments as ``forward``.
            return_congealed_img: also return the warped images at
                ``output_resolution`` (default flow_size), equal to ``forward``'s.
        Returns:
            warp: (rows, flow_size, flow_size, 2) sampling grid when the last
            stage is a flow, else (rows, 2, 3) matrices; with
            ``return_congealed_img`` (warp, images (rows, 3, R, R)).
        """
        for key in ('return_warp', 'return_flow', 'unfold', 'return_intermediates', 'return_out_of_bounds',
                    'return_sim'):
            if forward_kwargs.pop(key, False):
                raise UserError(f'compute_warp does not take {key}')
        if self.is_flow:
            # The grid at flow_size; other resolutions are resized from it.
            congealed, warp = self.forward(img, return_warp=True, iters=iters, **forward_kwargs)
            resolution = output_resolution or self.stn_in_size
            if return_congealed_img and resolution != self.stn_in_size:
                sampled = forward_kwargs.get('input_img_for_sampling')
                congealed = self.warp_images(img if sampled is None else sampled, warp, resolution,
                                             forward_kwargs.get('padding_mode', 'border'))
        else:
            congealed, warp = self.forward(img, output_resolution=output_resolution, return_flow=True,
                                           iters=iters, **forward_kwargs)
        return (warp, congealed) if return_congealed_img else warp

    def warp_grid(self, warp, output_resolution=None):
        """The sampling grid (rows, R, R, 2) of a ``compute_warp`` warp at R
        (default flow_size), as ``forward`` builds it."""
        resolution = output_resolution or self.stn_in_size
        if warp.dim() == 3:  # similarity matrices
            return F.affine_grid(warp, (warp.shape[0], 1, resolution, resolution), align_corners=False)
        return resize_grid(warp, resolution)

    def warp_images(self, source, warp, output_resolution=None, padding_mode='border'):
        """Sample ``source`` (N or rows, C, H, W) through a ``compute_warp`` warp
        -> (rows, C, R, R), as ``forward`` does, without running the network."""
        grid = self.warp_grid(warp, output_resolution)
        source = repeat_rows(source, grid.shape[0], 'source images')
        return self._last_head().warper(source, grid, check_padding_mode(padding_mode))

    def _points_warp(self, warp, output_resolution):
        """What template points are mapped through: a grid, or matrices in closed form."""
        return self.warp_grid(warp, output_resolution)

    def _uncongeal_template_size(self, image_size):
        """Pixel size of the template ``normalize_input_points`` refers to."""
        return self.stn_in_size

    def uncongeal_points_with_warp(self, warp, points_congealed, source_size, output_resolution=None,
                                   unnormalize_output_points=True, normalize_input_points=False,
                                   image_size=None):
        """``uncongeal_points`` through a warp kept from ``compute_warp`` (no network pass).

        Args:
            warp: the batch's warp from ``compute_warp`` (or ``forward``'s
                flow-size grid of a flow model, its matrices of a similarity one).
            points_congealed: (N or rows, P, 2) template points (as
                ``uncongeal_points``).
            source_size: side of the sampled image (pixels the output is in).
            output_resolution: resolution of the grid the points are read in
                (as ``uncongeal_points``; default flow_size).
            image_size: side of the regression input when it differs from
                ``source_size`` (similarity pixel templates are sized by it).
        Returns:
            (rows, P, 2) as ``uncongeal_points``: equal to it for the same images.
        """
        points = repeat_rows(points_congealed, warp.shape[0], 'points').to(warp.dtype)
        if normalize_input_points:
            template_size = self._uncongeal_template_size(source_size if image_size is None else image_size)
            points = normalize_points(points, source_size, template_size)
        points = map_template_points(self._points_warp(warp, output_resolution), points)
        if unnormalize_output_points:
            points = unnormalize_points(points, source_size, source_size)
        return points

    def uncongeal_points(self, imgB, points_congealed, output_resolution=None, iters=1,
                         unnormalize_output_points=True, normalize_input_points=False,
                         return_congealed_img=False, **forward_kwargs):
        """Map template points into images by sampling the warp at them.

        Args:
            imgB: (N, 3, S, S) images.
            points_congealed: (N or rows, P, 2) normalised template positions,
                or with ``normalize_input_points`` pixels (of the flow_size
                grid; of an S-sized template for a single similarity stage).
            output_resolution: the grid is read at this resolution (default
                flow_size); also the size of the congealed images.
        Returns:
            (rows, P, 2) pixels of the sampled image (normalised without
            ``unnormalize_output_points``), and the congealed images with
            ``return_congealed_img``.
        """
        sampled = forward_kwargs.get('input_img_for_sampling')
        source_size = (imgB if sampled is None else sampled).shape[-1]
        result = self.compute_warp(imgB, output_resolution=output_resolution, iters=iters,
                                   return_congealed_img=return_congealed_img, **forward_kwargs)
        warp, congealed = result if return_congealed_img else (result, None)
        points = self.uncongeal_points_with_warp(warp, points_congealed, source_size, output_resolution,
                                                 unnormalize_output_points, normalize_input_points,
                                                 image_size=imgB.shape[-1])
        return (points, congealed) if return_congealed_img else points

    def transfer_points(self, imgA, imgB, pointsA, output_resolution=None, iters=1,
                        **forward_kwargs):
        """Carry points from images A to images B through the template.

        Args:
            imgA, imgB: (N, 3, S, S) image pairs.
            pointsA: (N, P, 2) pixel coordinates (x, y) in A.
            forward_kwargs: as ``forward`` (padding_mode, warp_policy, ...).
        Returns:
            (rows, P, 2) pixel coordinates in B (rows = N unless every one of
            several heads warps every image).
        """
        congealed = self.congeal_points(imgA, pointsA, output_resolution=output_resolution,
                                        iters=iters, **forward_kwargs)
        # Flow transformers give template pixels on the flow_size grid, similarity
        # ones normalised template positions.
        return self.uncongeal_points(imgB, congealed, output_resolution=output_resolution,
                                     normalize_input_points=self.is_flow, iters=iters,
                                     **forward_kwargs)

    def _require_flow(self, method):
        if not self.is_flow:
            raise UserError(f'{method} compares the smoothness of residual flows, and this '
                            f'spatial transformer predicts none (transforms='
                            f"{self.config['transforms']}); use a transformer with a flow stage")

    def forward_with_flip(self, input_img, return_flow=False, return_warp=False,
                          return_inputs=False, return_flip_indices=False, **forward_kwargs):
        """Warp each image and its mirror; keep the one whose residual flow is smoother.

        Args:
            input_img: (N, C, H, W) images in [-1, 1].
            return_warp: also return the sampling grids, expressed for the
                unmirrored input (x negated where the mirror was kept).
            return_flow: also return the residual flows (R, F, F, 2).
            return_inputs: also return the inputs, mirrored where chosen.
            return_flip_indices: also return (R, 1, 1, 1) bool, True where the
                mirror was kept.
            forward_kwargs: as ``forward`` (an ``input_img_for_sampling`` is
                mirrored along with the input).
        Returns:
            congealed images (R, C, S, S) then the requested extras in the
            order warp, flow, inputs, flip indices (R = N, or N * K rows for
            'cartesian' with K heads; ``unfold`` splits rows per image).
        """
        self._require_flow('forward_with_flip')
        unfold = forward_kwargs.pop('unfold', False)
        n = input_img.shape[0]
        congealed, warp, flow = self.forward(input_img, return_warp=True, return_flow=True,
                                             **forward_kwargs)
        mirrored_kwargs = dict(forward_kwargs)
        if forward_kwargs.get('input_img_for_sampling') is not None:
            mirrored_kwargs['input_img_for_sampling'] = forward_kwargs['input_img_for_sampling'].flip(3)
        mirrored_input = input_img.flip(3)
        congealed_m, warp_m, flow_m = self.forward(mirrored_input, return_warp=True,
                                                   return_flow=True, **mirrored_kwargs)
        rows = flow.shape[0]
        # Ties (e.g. an untrained model) keep the unmirrored image.
        keep_mirror = (flow_total_variation(flow_m) < flow_total_variation(flow)).view(rows, 1, 1, 1)
        outputs = [torch.where(keep_mirror, congealed_m, congealed)]
        if return_warp:
            # Sampling the mirrored image at x is sampling the original at -x.
            warp_m = warp_m * warp_m.new_tensor([-1.0, 1.0])
            outputs.append(torch.where(keep_mirror, warp_m, warp))
        if return_flow:
            outputs.append(torch.where(keep_mirror, flow_m, flow))
        if return_inputs:
            outputs.append(torch.where(keep_mirror, repeat_rows(mirrored_input, rows),
                                       repeat_rows(input_img, rows)))
        if return_flip_indices:
            outputs.append(keep_mirror)
        return pack_outputs(outputs, n, unfold)

    def match_flows(self, imgA, imgB, pointsA, pointsB=None, permutation=None, **forward_kwargs):
        """Mirror A, B, both or neither, whichever gives the smoothest pair of flows.

        Args:
            imgA, imgB: (N, C, H, W) image pairs.
            pointsA, pointsB: (N, P, D) keypoints (x, y pixels, optional extra
                columns such as visibility); pointsB is optional.
            permutation: optional left/right keypoint permutation applied to
                the points of each mirrored image.
            forward_kwargs: as ``forward``; with several heads a per-image
                ``warp_policy`` is needed (one flow per image).
        Returns:
            imgA, imgB, pointsA, [pointsB,] pick where pick (N, 1, 1, 1) long is
            0 (neither mirrored), 1 (A), 2 (B) or 3 (both).
        """
        self._require_flow('match_flows')
        n = imgA.shape[0]
        forward_kwargs.pop('input_img_for_sampling', None)  # flows do not depend on it
        forward_kwargs.pop('unfold', None)
        policy = forward_kwargs.get('warp_policy', 'cartesian')
        if torch.is_tensor(policy):
            forward_kwargs['warp_policy'] = policy.repeat(4, *([1] * (policy.dim() - 1)))
        elif self.num_heads > 1:
            raise UserError('match_flows needs one flow per image: pass warp_policy with '
                            'per-image head indices or scores for this clustering model')
        batch = torch.cat([imgA, imgB, imgA.flip(3), imgB.flip(3)])
        _, flows = self.forward(batch, return_flow=True, **forward_kwargs)
        tv_a, tv_b, tv_a_mirrored, tv_b_mirrored = flow_total_variation(flows).view(4, n)
        costs = torch.stack([tv_a + tv_b, tv_a_mirrored + tv_b,
                             tv_a + tv_b_mirrored, tv_a_mirrored + tv_b_mirrored])
        pick = costs.argmin(dim=0)  # first minimum: ties keep the images as they are
        mirror_a, mirror_b = pick % 2 == 1, pick >= 2
        imgA = torch.where(mirror_a.view(n, 1, 1, 1), imgA.flip(3), imgA)
        imgB = torch.where(mirror_b.view(n, 1, 1, 1), imgB.flip(3), imgB)
        pointsA = mirror_points(pointsA, mirror_a, imgA.shape[-1], permutation)
        pick = pick.view(n, 1, 1, 1)
        if pointsB is None:
            return imgA, imgB, pointsA, pick
        pointsB = mirror_points(pointsB, mirror_b, imgB.shape[-1], permutation)
        return imgA, imgB, pointsA, pointsB, pick
