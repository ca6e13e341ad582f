"""The Python API: a trained GANgealing model as an object (not runnable).

    from applications.api import Congealer
    model = Congealer('cat', real_size=256, device='cpu')   # a released name or a checkpoint path
    aligned = model.align(images)                            # (N, 3, S, S) in [-1, 1] -> congealed images
    edited = model.propagate(images, 'label.png')            # the label drawn on the template, on each image
    points_b = model.transfer_points(image_a, image_b, points_a)
    flow = model.dense_flow(image_a, image_b)                # where every pixel of A lands in B

Flips and clusters are handled as the applications handle them: a released
model's test settings (padding, iterations, heads) are applied, the mirror of
each image is chosen by flow smoothness (or by the checkpoint's cluster
classifier), and a clustering model sends each image to the head its
classifier picks (or to ``cluster``). Every call runs without gradients.
"""
import torch

from applications.common.correspondence import dense_flow, transfer_points
from applications.common.models import check_cluster, load_stn
from applications.common.propagation import Label, align, load_label, propagate_aligned, propagation_argparse
from options import parse_eval_options
from utils.colour_scales import scale_for_cluster


class Congealer:
    """A loaded spatial transformer (and cluster classifier) with the applications' test-time choices.

    Args:
        ckpt: a released model's name (downloaded once) or a checkpoint path.
        real_size: side S of the images given to it (a power of two, at least
            the model's flow size: 128 for the released models).
        device: 'cpu', 'cuda' or a torch.device.
        cluster: the head of a clustering model to use for every image (None:
            its cluster classifier picks each image's head).
        options: any other evaluation flag by name, e.g. ``no_flip_inference=True``,
            ``precision='fp32'``, ``iters=3`` (with ``override=True`` for a released model).
    Raises:
        UserError: unknown model, unreadable checkpoint, or options it refuses.
    """

    def __init__(self, ckpt, real_size=256, device='cpu', cluster=None, **options):
        argv = ['--ckpt', str(ckpt), '--real_size', str(real_size), '--device', str(device)]
        if cluster is not None:
            argv += ['--cluster', str(cluster)]
        for name, value in options.items():
            if value is True:
                argv.append(f'--{name}')
            elif value is not False and value is not None:
                argv += [f'--{name}', *map(str, value if isinstance(value, (list, tuple)) else [value])]
        self.opt = parse_eval_options(propagation_argparse(), argv, verbose=False)
        self.device = torch.device(device)
        self.t, classifier = load_stn(self.opt, self.device, with_classifier=True)
        self.classifier = classifier if self.opt.num_heads > 1 else None
        check_cluster(self.opt, self.classifier)

    @property
    def size(self):
        """Side S of the images the model takes."""
        return int(self.opt.real_size)

    def _images(self, images):
        images = torch.as_tensor(images)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return images.to(self.device, torch.float32)

    @torch.no_grad()
    def alignment(self, images, output_resolution=None):
        """The full alignment of (N, 3, S, S) images (see applications.common.propagation.Alignment)."""
        return align(self.t, self.opt, self._images(images), output_resolution=output_resolution,
                     classifier=self.classifier)

    def align(self, images, output_resolution=None):
        """(N, 3, S, S) images in [-1, 1] -> (N, 3, R, R) congealed images (R: ``output_resolution`` or S)."""
        return self.alignment(images, output_resolution).congealed

    @torch.no_grad()
    def propagate(self, images, label_path, objects=False, resolution=None, blend_alg='alpha'):
        """Draw a label made on the congealed template onto each image.

        Args:
            images: (N, 3, S, S) in [-1, 1].
            label_path: an RGBA edit (alpha > 0 is the label) or a black-and-white mask.
            objects: keep the label's own colours (else a colour scale).
            resolution: the label is resampled to this many pixels per side (default S).
        Returns:
            (N, 3, S, S) images in [-1, 1] with the label splatted on.
        """
        images = self._images(images)
        resolution = resolution or self.size
        cluster = self.opt.cluster if self.opt.num_heads > 1 else None
        label = Label(*load_label(label_path, resolution, objects, self.device, scale_for_cluster(cluster)),
                      resolution)
        alignment = align(self.t, self.opt, images, classifier=self.classifier)
        return propagate_aligned(self.t, self.opt, images, alignment, label, blend_alg)

    def transfer_points(self, image_a, image_b, points_a):
        """Carry (N, P, 2) pixel positions (x, y) in images A to images B through the template.

        Mirrors are chosen per pair as PCK-Transfer chooses them; the result is
        in B's own pixels. Returns (N, P, 2).
        """
        return transfer_points(self.t, self.opt, self._images(image_a), self._images(image_b),
                               torch.as_tensor(points_a, dtype=torch.float32, device=self.device),
                               self.classifier)[0]

    def dense_flow(self, image_a, image_b):
        """For every pixel of A, where it lands in B: (N, S, S, 2) pixel positions (x, y) in B."""
        return dense_flow(self.t, self.opt, self._images(image_a), self._images(image_b), self.classifier)[0]
