"""Cluster assignment without a classifier: each image goes to the head whose congealed mean it matches best.

A clustering model's heads each congeal towards their own mode. Given the
mean congealed image of every head over a set of real images, an image (or
its mirror) belongs to the head whose congealed output is closest, in the
training loss's feature space, to that head's mean: the trainer's own rule
(closest congealed output to the target), with the real images' means in
place of the generator's targets.

``MeanAssigner`` offers the cluster classifier's interface (``num_clusters``,
``flips``, ``forward`` logits, ``assign``, ``run_flip``, ``run_flip_target``),
so ``applications.common.models.decide_heads`` can use either.

(Not runnable: imported by the applications and the benchmarks.)
"""
import torch

from models.cluster_classifier import ClassDecisions, mirror_where


@torch.no_grad()
def head_means(t, images, stn_kwargs, heads=None, mirrored=None):
    """(K, 3, F, F) mean congealed image of each head.

    Args:
        t: clustering transformer with K heads; images (N, 3, S, S).
        heads: optional (N,) long assignment: each head's mean is taken over
            its own images (mirrored where ``mirrored`` says); default: every
            image through every head.
    Returns:
        (means (K, 3, F, F), counts (K,)); a head with no image keeps a zero mean.
    """
    k = t.num_heads
    if heads is None:
        congealed = t(images, warp_policy='cartesian', unfold=True, **stn_kwargs)  # (N, K, 3, F, F)
        return congealed.float().mean(0), torch.full((k,), images.shape[0], dtype=torch.float32)
    if mirrored is not None:
        images = mirror_where(images, mirrored)
    congealed = t(images, warp_policy=heads, **stn_kwargs).float()
    sums = torch.zeros(k, *congealed.shape[1:], device=congealed.device).index_add_(0, heads, congealed)
    counts = torch.bincount(heads, minlength=k).float()
    return sums / counts.clamp_min(1).view(-1, 1, 1, 1), counts.cpu()


class MeanAssigner(ClassDecisions):
    """Assign images to (mirror, head) by the distance of their congealed outputs from each head's mean.

    Args:
        t: transformer with K heads.
        means: (K, 3, F, F) congealed mean of each head (``head_means``).
        loss_fn: perceptual distance ``(a, b) -> (N,)``.
        flips: also try each image's mirror.
        stn_kwargs: forward options (padding_mode, iters).
    """

    def __init__(self, t, means, loss_fn, flips=True, stn_kwargs=None):
        self.t, self.means, self.loss_fn, self.flips = t, means, loss_fn, flips
        self.stn_kwargs = stn_kwargs or {}
        self.num_clusters = t.num_heads

    @torch.no_grad()
    def distances(self, images):
        """(N, (1 + flips) * K) distances, column ``mirror * K + head`` (the classifier's class order)."""
        n, k = images.shape[0], self.num_clusters
        variants = [images, images.flip(3)] if self.flips else [images]
        columns = []
        for variant in variants:
            congealed = self.t(variant, warp_policy='cartesian', **self.stn_kwargs).float()  # (N * K, 3, F, F)
            targets = self.means.to(congealed.device).float().repeat(n, 1, 1, 1)
            columns.append(self.loss_fn(congealed, targets).float().reshape(n, k))
        return torch.cat(columns, 1)

    def forward(self, images):
        """(N, classes) logits: negated distances."""
        return -self.distances(images)

    __call__ = forward


@torch.no_grad()
def fit_mean_assigner(t, images, loss_fn, flips=True, rounds=2, stn_kwargs=None):
    """A MeanAssigner whose means are refined on ``images`` (k-means style).

    Round 0 takes every image through every head; each further round
    assigns the images and takes each head's mean over its own images
    (mirrored as assigned).

    Args:
        images: (N, 3, S, S) real images in [-1, 1].
    Returns:
        MeanAssigner.
    """
    stn_kwargs = stn_kwargs or {}
    means, _ = head_means(t, images, stn_kwargs)
    assigner = MeanAssigner(t, means, loss_fn, flips, stn_kwargs)
    for _ in range(rounds):
        _, _, classes, mirrored = assigner.run_flip(images)
        heads = classes % assigner.num_clusters
        refined, counts = head_means(t, images, stn_kwargs, heads, mirrored)
        # A head left without images keeps its previous mean.
        assigner.means = torch.where(counts.view(-1, 1, 1, 1).to(refined.device) > 0, refined, assigner.means)
    return assigner
