"""Behaviour shared by single and composed spatial transformers: weight loading,
output packing, mirror selection by flow smoothness, point normalisation."""
import torch
from torch import nn

from utils.errors import UserError
from models.spatial_transformers.batching import repeat_rows
from models.spatial_transformers.geometry import (
    convert_points, normalize_points, unnormalize_points)
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

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Load our or official weights (fixed buffers optional, see state_dicts).

        With ``strict`` a mismatch raises a UserError naming the checkpoint's
        and this model's configurations.
        """
        return super().load_state_dict(prepare_state_dict(self, state_dict, strict),
                                       strict=strict, assign=assign)

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
