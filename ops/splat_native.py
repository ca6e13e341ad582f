"""Gaussian splatting of points onto pixel grids, in plain vectorised PyTorch.

Every point spreads a Gaussian footprint over the pixels of a small square
window around it (from ``floor(x - 2 sigma)`` to ``ceil(x + 2 sigma)`` on each
axis, clipped to the image). All windows of a chunk of points are built at once
as (N, P, K, K) tensors and accumulated into the output with one
``index_add_``; there are no Python loops over points or pixels. Runs on any
device the inputs live on.
"""
import math

import torch

# Upper bound on the number of window cells (times channels) handled at once,
# which bounds the temporary memory of a call to a few hundred MB.
_CELLS_PER_CHUNK = 1 << 23


def _as_per_image_sigma(sigma, batch, device, dtype):
    """``sigma`` (a number or a (N,) tensor) -> (N,) tensor; rejects non-positive values."""
    sigma = torch.as_tensor(sigma, device=device, dtype=dtype)
    if sigma.dim() == 0:
        sigma = sigma.expand(batch)
    sigma = sigma.reshape(-1)
    if sigma.numel() != batch:
        raise ValueError(f'sigma must be a number or have one value per image ({batch}), got {sigma.numel()}')
    if not bool((sigma > 0).all()):
        raise ValueError('sigma must be positive')
    return sigma


def _axis_window(coord, sigma, extent, offsets):
    """Pixel indices and Gaussian factors of each point's window along one axis.

    coord: (N, P) positions; sigma: (N, 1); offsets: (K,); extent: image size
    on this axis. The window is floor(coord - 2 sigma) .. ceil(coord + 2 sigma),
    clipped to the image; factors outside it are zero, so the (N, P, K, K)
    products built from these need no masks of their own.
    Returns (index (N, P, K) long, clamped into the image; factor (N, P, K)).
    """
    radius = 2 * sigma
    first = torch.floor(coord - radius)
    last = torch.ceil(coord + radius)
    index = first.unsqueeze(-1) + offsets
    valid = (index <= last.unsqueeze(-1)) & (index >= 0) & (index <= extent - 1)
    distance = index - coord.unsqueeze(-1)
    factor = torch.exp(distance.square() * (-0.5 / sigma.square()).unsqueeze(-1)) * valid
    return index.clamp_(0, extent - 1).long(), factor


def gaussian_splat_native(points, values, sigma, height, width, normalize_footprint=False):
    """Accumulate Gaussian footprints of weighted points.

    Args:
        points: (N, P, 2) float pixel coordinates (x, y); x in [0, width),
            y in [0, height) (sub-pixel allowed). Points outside the image (and
            NaN points) are ignored.
        values: (N, P, C) values carried by the points (colours, mask values).
        sigma: positive float, or (N,) tensor with one standard deviation (in
            pixels) per image.
        height, width: size of the output grid.
        normalize_footprint: if True, each point's weights are divided by their
            sum over the pixels it reaches, so every in-image point deposits
            exactly its value (mass is conserved); if False the weight at a
            pixel at distance d is exp(-d^2 / (2 sigma^2)) (1 at the centre).
    Returns:
        (accumulated, weights): accumulated (N, C, H, W), the sum over points of
        weight * value; weights (N, 1, H, W), the sum over points of the weights.
        Both in the floating dtype of ``values`` (float32 for integer inputs).
    """
    if points.dim() != 3 or points.size(-1) != 2:
        raise ValueError(f'points must be (N, P, 2), got {tuple(points.shape)}')
    if values.dim() != 3 or values.shape[:2] != points.shape[:2]:
        raise ValueError(f'values must be (N, P, C) matching points {tuple(points.shape)}, '
                         f'got {tuple(values.shape)}')
    dtype = values.dtype if values.is_floating_point() else torch.float32
    device = points.device
    batch, num_points, channels = values.shape
    sigma = _as_per_image_sigma(sigma, batch, device, dtype)
    points = points.to(dtype)
    values = values.to(dtype)

    # Sums of values and of weights in one buffer: the weights are an extra channel.
    totals = torch.zeros(batch * height * width, channels + 1, device=device, dtype=dtype)
    if num_points == 0:
        return _split_totals(totals, batch, channels, height, width)

    # Widest window any point can have: floor(x - 2s) .. ceil(x + 2s) spans at most ceil(4s) + 2 pixels.
    window = int(math.ceil(4 * float(sigma.max()))) + 2
    offsets = torch.arange(window, device=device, dtype=dtype)
    chunk = max(1, _CELLS_PER_CHUNK // max(1, batch * window * window * (channels + 1)))
    image_rows = (torch.arange(batch, device=device) * height).view(batch, 1, 1)
    s = sigma.view(batch, 1)
    for start in range(0, num_points, chunk):  # chunks of points, each fully vectorised
        x = points[:, start:start + chunk, 0]
        y = points[:, start:start + chunk, 1]
        count = x.size(1)
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        # NaNs fail every comparison above; zero them so no NaN reaches the sums.
        x = torch.where(inside, x, torch.zeros_like(x))
        y = torch.where(inside, y, torch.zeros_like(y))
        cols, col_factor = _axis_window(x, s, width, offsets)
        rows, row_factor = _axis_window(y, s, height, offsets)
        col_factor = col_factor * inside.unsqueeze(-1)
        if normalize_footprint:
            # The footprint is separable, so its sum is the product of the axis sums.
            total = row_factor.sum(-1) * col_factor.sum(-1)
            col_factor = col_factor / total.clamp_min(1e-30).unsqueeze(-1)
        weight = row_factor.unsqueeze(-1) * col_factor.unsqueeze(-2)  # (N, p, K, K)
        flat = ((image_rows + rows) * width).unsqueeze(-1) + cols.unsqueeze(-2)  # (N, p, K, K)
        carried = torch.cat([values[:, start:start + chunk], torch.ones_like(x).unsqueeze(-1)], dim=-1)
        contributions = weight.unsqueeze(-1) * carried.view(batch, count, 1, 1, channels + 1)
        totals.index_add_(0, flat.reshape(-1), contributions.reshape(-1, channels + 1))
    return _split_totals(totals, batch, channels, height, width)


def _split_totals(totals, batch, channels, height, width):
    grids = totals.view(batch, height, width, channels + 1).permute(0, 3, 1, 2)
    return grids[:, :channels].contiguous(), grids[:, channels:].contiguous()
