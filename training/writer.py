"""Where training writes what it shows: TensorBoard scalars and image grids, and the grids as PNG files."""
import os

from PIL import Image
from torchvision.utils import make_grid

from utils.image_io import tensor_to_uint8


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
        array = tensor_to_uint8(grid, value_range=(0, 1))
        Image.fromarray(array).save(os.path.join(self.exp_dir, f'{name}_{step:07d}.png'))

    def flush(self):
        self.tb.flush()

    def close(self):
        self.tb.close()
