"""Measurements of predicted warps: smoothness and whether they leave the image."""
import torch


def flow_total_variation(flow):
    """Per-sample roughness of a flow field.

    Smooth-L1 (Huber, threshold 1) of the differences between vertically and
    horizontally neighbouring flow vectors, each direction averaged, then
    summed.

    Args:
        flow: (N, H, W, 2) flow (usually the residual flow).
    Returns:
        (N,) roughness, >= 0; zero for a constant flow.
    """
    def huber_mean(difference):
        magnitude = difference.abs()
        huber = torch.where(magnitude <= 1.0, 0.5 * magnitude.pow(2), magnitude - 0.5)
        return huber.mean(dim=(1, 2, 3))

    return (huber_mean(flow[:, 1:] - flow[:, :-1]) +
            huber_mean(flow[:, :, 1:] - flow[:, :, :-1]))


def warp_exceeds_image_bounds(grid, image_bounds=None, threshold=0.025):
    """Whether a warp reads beyond the image content for more than a fraction of its pixels.

    Args:
        grid: (R, H, W, 2) sampling grids.
        image_bounds: optional (N, 2) float (height, width) of the original
            images before they were padded to a square (centred); R must be a
            multiple of N (rows of one image are consecutive). None means the
            whole square is content.
        threshold: largest fraction of output pixels allowed outside.
    Returns:
        (R,) bool, True where the fraction of output pixels sampled outside
        the content exceeds ``threshold`` along x or along y.
    """
    rows, out_h, out_w, _ = grid.shape
    if image_bounds is None:
        bound_y = grid.new_tensor(float(out_h))
        bound_x = grid.new_tensor(float(out_w))
    else:
        image_bounds = image_bounds.to(grid).repeat_interleave(rows // image_bounds.shape[0], 0)
        height, width = image_bounds[:, 0], image_bounds[:, 1]
        landscape = height < width
        bound_y = torch.where(landscape, out_h * height / width, grid.new_tensor(float(out_h))).round()
        bound_x = torch.where(landscape, grid.new_tensor(float(out_w)), out_w * width / height).round()
    # The content spans (bound - 1) / size of the normalised half-extent.
    limit_x = ((bound_x - 1) / out_w).reshape(-1, 1)
    limit_y = ((bound_y - 1) / out_h).reshape(-1, 1)
    outside_x = (grid[..., 0].flatten(1).abs() > limit_x).float().mean(dim=1)
    outside_y = (grid[..., 1].flatten(1).abs() > limit_y).float().mean(dim=1)
    return (outside_x > threshold) | (outside_y > threshold)
