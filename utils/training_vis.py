"""Training-time pictures: image grids to PNG files and TensorBoard.

Everything here runs under ``torch.no_grad`` on the EMA transformer and is
called every ``--vis_every`` iterations, so it works in mini-batches of
``--vis_batch_size`` and never keeps more than one batch on the device.
"""
import os

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from utils.distributed import all_gather_tensor, get_world_size


class ExperimentWriter:
    """Writes scalars to TensorBoard and image grids to TensorBoard and PNG files.

    Only construct it on the main process.
    """

    def __init__(self, exp_dir, purge_step=None):
        """``purge_step``: a resumed run's first iteration; TensorBoard then hides
        what an interrupted predecessor logged from that step on."""
        from torch.utils.tensorboard import SummaryWriter
        self.exp_dir = exp_dir
        os.makedirs(exp_dir, exist_ok=True)
        self.tb = SummaryWriter(exp_dir, purge_step=purge_step)

    def scalar(self, tag, value, step):
        self.tb.add_scalar(tag, value, step)

    def grid(self, images, name, step, nrow=None, value_range=(-1, 1), scale_each=False):
        """Log (N, 3, H, W) images as one grid named ``name`` at ``step``.

        ``value_range`` is the range mapped to black..white; with ``scale_each``
        every image is stretched to its own min..max (for average images).
        """
        images = images.detach().float().cpu()
        if scale_each:
            lo = images.flatten(1).min(1)[0].view(-1, 1, 1, 1)
            hi = images.flatten(1).max(1)[0].view(-1, 1, 1, 1)
            images = (images - lo) / (hi - lo).clamp_min(1e-8)
        else:
            lo, hi = value_range
            images = (images - lo) / (hi - lo)
        nrow = nrow or max(1, int(images.size(0) ** 0.5))
        grid = make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=0)
        self.tb.add_image(name, grid, step)
        array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(array).save(os.path.join(self.exp_dir, f'{name}_{step:07d}.png'))

    def flush(self):
        self.tb.flush()

    def close(self):
        self.tb.close()


@torch.no_grad()
def congealed_mean(t_ema, images_iter, limit, device, **stn_kwargs):
    """Average congealed image over up to ``limit`` images from all ranks.

    Args:
        images_iter: iterable of (B, 3, S, S) batches in [-1, 1] (this rank's share).
        limit: total number of images over all ranks.
    Returns:
        (mean (K, 3, s, s) with K = num_heads when the STN has several heads else 1,
        the first congealed batch on this rank).
    """
    total = None
    count = torch.zeros((), device=device)
    first = None
    per_rank = max(1, limit // get_world_size())
    for x in images_iter:
        x = x.to(device)
        out = t_ema(x, unfold=True, **stn_kwargs)  # (B, K, 3, s, s) with unfold
        if out.dim() == 4:
            out = out.unsqueeze(1)
        first = out if first is None else first
        batch_sum = out.sum(0)
        total = batch_sum if total is None else total + batch_sum
        count += x.size(0)
        if count.item() >= per_rank:
            break
    total = all_gather_tensor(total.unsqueeze(0)).sum(0)
    count = all_gather_tensor(count.view(1)).sum()
    return total / count, first
