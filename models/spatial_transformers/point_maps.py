"""Moving points through sampling grids.

A spatial transformer warps by reverse sampling: its grid says, for each
output (template) pixel, where in the source image to read. Carrying a
template point to the image is therefore a lookup in the grid; carrying an
image point to the template needs the inverse, found here by a nearest
neighbour search over the grid's sample positions.
"""
import torch
import torch.nn.functional as F

from models.spatial_transformers.geometry import apply_affine

# Bound on the entries of the (N, H*W, points, 2) difference table built at once.
_MAX_TABLE_ENTRIES = 2 ** 25


def sample_grid_at_points(grid, points):
    """Read a sampling grid at normalised template positions.

    Args:
        grid: (N, H, W, 2) sampling grid (x, y in [-1, 1]).
        points: (N, P, 2) normalised template positions (x, y).
    Returns:
        (N, P, 2) normalised source positions (bilinear, border-clamped).
    """
    values = F.grid_sample(grid.permute(0, 3, 1, 2), points.to(grid.dtype).unsqueeze(2),
                           mode='bilinear', padding_mode='border', align_corners=False)
    return values.squeeze(3).permute(0, 2, 1)


def map_template_points(warp, points):
    """Carry normalised template positions into the source through a given warp.

    Args:
        warp: (N, H, W, 2) sampling grid (read bilinearly at the points), or
            (N, 2, 3) affine matrices (applied in closed form).
        points: (N, P, 2) normalised template positions (x, y).
    Returns:
        (N, P, 2) normalised source positions.
    """
    if warp.dim() == 3:
        return apply_affine(warp, points.to(warp.dtype))
    return sample_grid_at_points(warp, points)


def nearest_grid_pixels(grid, points):
    """Invert a sampling grid at given source positions by nearest neighbour.

    Args:
        grid: (N, H, W, 2) sampling grid.
        points: (N, P, 2) normalised source positions.
    Returns:
        (N, P, 2) float pixel indices (x, y) in [0, W - 1] x [0, H - 1] of the
        grid entries that sample closest to each point. Points that map
        outside the template end up on its border.
    """
    n, height, width, _ = grid.shape
    positions = grid.reshape(n, height * width, 1, 2)
    points = points.to(grid.dtype)
    chunk_size = max(1, _MAX_TABLE_ENTRIES // (2 * n * height * width))
    indices = []
    for start in range(0, points.shape[1], chunk_size):
        chunk = points[:, None, start:start + chunk_size]  # (N, 1, P', 2)
        distances = (positions - chunk).pow(2).sum(-1)  # (N, H*W, P')
        indices.append(distances.argmin(dim=1))
    flat = torch.cat(indices, dim=1)  # (N, P)
    return torch.stack([flat % width, flat // width], dim=-1).to(grid.dtype)
