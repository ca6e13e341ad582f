"""The cluster classifier of clustering GANgealing models.

A clustering transformer has one warp head per cluster; at training time every
generated sample goes to the head (and, with ``--flips``, the mirror) whose
congealed output is closest to its target. Real images have no target, so a
classifier learns, on generated samples, which (mirror, head) the transformer
would pick. Its logits are laid out as the trainer's assignment indices:
class ``mirror * num_clusters + head``.

The network is the similarity transformer's trunk (same layer names, so it can
start from the similarity stage's weights) ending in a linear layer to the
logits; its state dict matches the released car and horse checkpoints'
``classifier`` entry.
"""
import torch
from torch import nn

from models.layers import ConvLayer, EqualLinear
from models.spatial_transformers.sampling import TentDownsample
from models.spatial_transformers.trunk import build_convs, stn_channels
from models.gangealing import resize_for_stn
from utils.errors import UserError

# Buffers whose values are constants of the architecture: incoming values are
# ignored, missing ones are filled in (as for the transformers' state dicts).
_FIXED_SUFFIXES = ('input_downsample.kernel_horz', 'input_downsample.kernel_vert', '.kernel')


class ClassDecisions:
    """What follows from logits over the classes ``mirror * K + head``: the cluster and mirror of
    each image. Shared by the cluster classifier and by classifier-free assigners
    (``applications.common.cluster_by_means``); a subclass provides ``forward(images) -> (N, C)``
    logits, ``num_clusters`` (K) and ``flips`` (whether the mirrored classes exist).
    """

    def split_classes(self, classes):
        """Class indices -> (cluster (N,) long, mirrored (N,) bool)."""
        return classes % self.num_clusters, classes >= self.num_clusters

    def assign(self, images, ignore_flips=False):
        """(N,) predicted classes; with ``ignore_flips`` the cluster alone."""
        classes = self.forward(images).argmax(dim=1)
        return classes % self.num_clusters if ignore_flips else classes

    def run_flip(self, images):
        """Mirror each image as predicted.

        Returns:
            (images (N, 3, S, S) mirrored where predicted, logits (N, C),
             classes (N,), mirrored (N,) bool).
        """
        logits = self.forward(images)
        classes = logits.argmax(dim=1)
        mirrored = self.split_classes(classes)[1]
        return mirror_where(images, mirrored), logits, classes, mirrored

    def run_flip_target(self, images, cluster):
        """Mirror each image if the classifier prefers the mirror of ``cluster``.

        Returns (images mirrored where chosen, mirrored (N,) bool).
        """
        self._check_cluster(cluster)
        if not self.flips:
            return images, torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        logits = self.forward(images)
        mirrored = logits[:, cluster + self.num_clusters] > logits[:, cluster]
        return mirror_where(images, mirrored), mirrored

    def _check_cluster(self, cluster):
        if not 0 <= int(cluster) < self.num_clusters:
            raise UserError(f'cluster {cluster} does not exist: this classifier knows clusters 0 to '
                            f'{self.num_clusters - 1}')


class ResnetClassifier(ClassDecisions, nn.Module):
    """Predicts each image's (mirror, cluster) class.

    Args:
        size: resolution the classifier looks at (the transformer's flow_size).
        channel_multiplier: trunk width factor (the transformer's
            stn_channel_multiplier).
        blur_kernel: FIR kernel of the downsampling blocks.
        num_heads: number of logits: clusters times (1 + flips).
        supersize: resolution of full-size inputs (real_size); None when
            inputs already come at ``size``.
        flips: whether the logits cover mirrored inputs too (the second half of
            the classes are the mirrored ones); the released models have them.
        max_channels: width of the low-resolution layers (512 as released).
    """

    def __init__(self, size, channel_multiplier=2, blur_kernel=(1, 3, 3, 1), num_heads=1, supersize=None,
                 flips=True, max_channels=512):
        super().__init__()
        if flips and num_heads % 2:
            raise UserError(f'a classifier over clusters and mirrors needs an even number of classes, '
                            f'got {num_heads}')
        self.stn_in_size = size
        self.supersize = supersize
        self.num_heads = num_heads
        self.flips = bool(flips)
        self.num_clusters = num_heads // 2 if flips else num_heads
        if supersize is not None and supersize > size:
            self.input_downsample = TentDownsample(supersize // size)
        self.convs, channels, _ = build_convs(size, channel_multiplier, False, blur_kernel=blur_kernel,
                                              max_channels=max_channels)
        width = stn_channels(4, 0, max_channels)
        self.final_conv = ConvLayer(channels, width, 3)
        # As released: the logits pass through the leaky ReLU of the fused layer.
        self.to_logits = EqualLinear(width * 4 * 4, num_heads, activation='fused_lrelu')

    def regression_input(self, images):
        """(N, 3, S, S) images -> (N, 3, size, size)."""
        side = images.shape[-1]
        if side == self.stn_in_size:
            return images
        if side == self.supersize and hasattr(self, 'input_downsample'):
            return self.input_downsample(images)
        return resize_for_stn(images, self.stn_in_size)

    def forward(self, images):
        """(N, 3, S, S) images in [-1, 1] -> (N, num_heads) logits."""
        out = self.final_conv(self.convs(self.regression_input(images)))
        return self.to_logits(out.flatten(1))

    def run(self, images, cluster, return_flip_indices=False):
        """The images the classifier assigns to ``cluster``, mirrored as it says.

        Returns:
            (images (M, 3, S, S), logits (M, C)) and with ``return_flip_indices``
            also (mirrored (M,) bool, kept (M,) indices into the batch).
        """
        self._check_cluster(cluster)
        flipped, logits, classes, mirrored = self.run_flip(images)
        kept = torch.nonzero(self.split_classes(classes)[0] == cluster).reshape(-1)
        outputs = (flipped[kept], logits[kept])
        if return_flip_indices:
            outputs += (mirrored[kept], kept)
        return outputs

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Load our or a released classifier's weights.

        Fixed buffers (blur and downsampling kernels) are taken from this
        model. With ``strict`` every learned tensor must be present with the
        right shape (UserError otherwise); without it only the keys present
        with matching shapes are loaded (e.g. a similarity transformer's trunk).
        """
        fixed = {name for name, _ in self.named_buffers()}
        incoming = {key[len('module.'):] if key.startswith('module.') else key: value
                    for key, value in state_dict.items()}
        incoming = {key: value for key, value in incoming.items()
                    if key not in fixed and not key.endswith(_FIXED_SUFFIXES)}
        own = super().state_dict()
        learned = {key: value for key, value in own.items() if key not in fixed}
        if strict:
            missing = sorted(learned.keys() - incoming.keys())
            unexpected = sorted(incoming.keys() - learned.keys())
            wrong = sorted(key for key in learned.keys() & incoming.keys()
                           if tuple(incoming[key].shape) != tuple(learned[key].shape))
            if missing or unexpected or wrong:
                problems = '; '.join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                                     for label, keys in (('missing', missing), ('unexpected', unexpected),
                                                         ('wrong shape', wrong)) if keys)
                raise UserError(f'the classifier weights do not fit a classifier of size {self.stn_in_size} '
                                f'with {self.num_heads} classes ({problems})')
            selected = incoming
        else:
            selected = {key: value for key, value in incoming.items()
                        if key in learned and tuple(value.shape) == tuple(learned[key].shape)}
        completed = {key: value for key, value in own.items() if key in fixed}
        completed.update(selected)
        return super().load_state_dict(completed, strict=strict, assign=assign)


def mirror_where(images, mirrored):
    """(N, 3, S, S) images, each mirrored left-right where ``mirrored`` (N,) bool says so."""
    return torch.where(mirrored.view(-1, 1, 1, 1), images.flip(3), images)


def classifier_from_state_dict(state_dict, flow_size, channel_multiplier, supersize, num_clusters, max_channels=None):
    """Build and strictly load the classifier a state dict holds.

    The number of classes is read from ``to_logits.bias``: ``num_clusters`` of
    them (no mirrors) or twice as many (mirrors). ``max_channels`` defaults to
    the width of ``final_conv`` in the weights.

    Raises:
        UserError: the weights are not a classifier for a transformer with
            ``num_clusters`` heads, or do not fit the architecture.
    """
    bias = state_dict.get('to_logits.bias')
    if bias is None:
        raise UserError("the checkpoint's classifier entry has no 'to_logits.bias': not a cluster classifier")
    classes = int(bias.shape[0])
    if classes not in (num_clusters, 2 * num_clusters):
        raise UserError(f"the checkpoint's classifier predicts {classes} classes, which fits neither "
                        f'{num_clusters} clusters nor {num_clusters} clusters with mirrors')
    if max_channels is None:
        final = state_dict.get('final_conv.0.weight')
        max_channels = int(final.shape[0]) if final is not None else 512
    classifier = ResnetClassifier(flow_size, channel_multiplier=channel_multiplier, num_heads=classes,
                                  supersize=supersize, flips=classes == 2 * num_clusters, max_channels=max_channels)
    classifier.load_state_dict(state_dict)
    return classifier


@torch.no_grad()
def classifier_agreement(classifier, generator, stn, ll, loss_fn, num_samples, batch, flow_size, num_heads, flips,
                         sample_from_full_res=False, seed=0, **stn_kwargs):
    """How often the classifier picks the (mirror, head) the transformer assigns, on fresh samples.

    Samples are drawn from their own seeded stream (held out from training).
    Returns:
        dict with 'accuracy' (fraction of exact matches), 'cluster_accuracy'
        (the head alone) and 'samples'.
    """
    from models.gangealing import assign_samples, resize_for_stn

    device = next(classifier.parameters()).device
    stream = torch.Generator().manual_seed(10_000 + seed)
    exact = head = 0
    done = 0
    while done < num_samples:
        n = min(batch, num_samples - done)
        z = torch.randn(n, generator.style_dim, generator=stream).to(device)
        x, target, _ = assign_samples(generator, stn, ll, loss_fn, n, flow_size, num_heads, flips,
                                      sample_from_full_res, z=z, **stn_kwargs)
        predicted = classifier(resize_for_stn(x, flow_size)).argmax(dim=1)
        exact += int((predicted == target).sum())
        head += int((predicted % num_heads == target % num_heads).sum())
        done += n
    return {'accuracy': exact / done, 'cluster_accuracy': head / done, 'samples': done}
