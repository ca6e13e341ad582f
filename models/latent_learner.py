"""The congealing target: learned points in W, expressed in PCA coordinates.

A PCA fitted on many W samples gives the mean ``lat_mean`` (w_bar) and the
top ``ndirs`` principal directions d_1..d_D. Cluster k has coefficients a_k
(a row of ``coefficients``), and its target latent is

    c_k = w_bar + sum_j a_kj d_j.

For a sample w, the target W+ takes lerp(c_k, w, psi) in entries
[0, inject) (the coarse, pose-controlling styles) and w in the others
(appearance), so psi = 1 reproduces the sample and psi = 0 gives the sample's
appearance in the target's pose.

State-dict keys and shapes match official GANgealing checkpoints:
``coefficients`` (num_heads, ndirs), ``directions`` (ndirs, dim), ``lat_mean``
(1, dim).
"""
from typing import NamedTuple

import torch
import torch.nn as nn

from utils.errors import UserError


class PCAResult(NamedTuple):
    """A PCA of W: ``mean`` (1, dim), ``directions`` (k, dim) orthonormal rows
    ordered by decreasing variance, ``variances`` (k,) along them."""
    mean: torch.Tensor
    directions: torch.Tensor
    variances: torch.Tensor


def _identity(tensor):
    return tensor


def fit_pca_directions(samples, ndirs, chunk_size=65536):
    """Principal directions of a set of W samples.

    Args:
        samples: (M, dim) latents (M >= 2), on any device.
        ndirs: how many directions to keep (1 <= ndirs <= dim).
        chunk_size: rows per chunk when accumulating the covariance (bounds
            the float64 working memory for millions of samples).
    Returns:
        PCAResult in float32 on ``samples``' device. Each direction's sign is
        fixed (its largest-magnitude entry is positive), so every process that
        fits the same samples gets the same directions.
    """
    if samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(f'expected (M >= 2, dim) samples, got {tuple(samples.shape)}')
    count, dim = samples.shape
    if not 1 <= ndirs <= dim:
        raise UserError(f'ndirs must be between 1 and the latent width {dim}, got {ndirs}')
    chunks = samples.split(chunk_size)
    # Two passes (mean, then centred scatter) in float64 keep the covariance accurate.
    mean = sum(chunk.double().sum(0) for chunk in chunks) / count
    scatter = torch.zeros(dim, dim, dtype=torch.float64, device=samples.device)
    for chunk in chunks:
        centred = chunk.double() - mean
        scatter += centred.T @ centred
    eigenvalues, eigenvectors = torch.linalg.eigh(scatter / (count - 1))  # ascending order
    order = torch.argsort(eigenvalues, descending=True)[:ndirs]
    directions = eigenvectors[:, order].T  # (ndirs, dim)
    largest = directions.abs().argmax(dim=1, keepdim=True)
    directions = directions * directions.gather(1, largest).sign()
    return PCAResult(mean.float().unsqueeze(0), directions.float().contiguous(),
                     eigenvalues[order].clamp_min(0).float())


@torch.no_grad()
def draw_w_samples(generator, n_samples, batch=4096):
    """(n_samples, dim) W samples from ``generator.batch_latent``, drawn in batches."""
    return torch.cat([generator.batch_latent(min(batch, n_samples - start))
                      for start in range(0, n_samples, batch)])


def pca_W(generator, n_samples, ndirs, batch=4096, gather_fn=None):
    """Fit the PCA of W on samples of ``generator``'s mapping network.

    Args:
        generator: anything with ``batch_latent(n) -> (n, dim)``.
        n_samples: samples drawn by this process (the fit uses every
            process's samples once gathered).
        ndirs: number of principal directions.
        batch: samples per mapping-network call.
        gather_fn: concatenates every process's (n, dim) tensor along dim 0
            (e.g. ``utils.distributed.all_gather_tensor``); identity by default.
    Returns:
        PCAResult (see ``fit_pca_directions``).
    """
    gather_fn = gather_fn or _identity
    return fit_pca_directions(gather_fn(draw_w_samples(generator, n_samples, batch)), ndirs)


class DirectionInterpolator(nn.Module):
    """Learned congealing targets and the W+ latents that render them.

    Args:
        ndirs: number of PCA directions the targets move along (``--ndirs``).
        inject_index: W+ entries [0, inject_index) take the target (``--inject``).
        n_latent: number of W+ entries of the generator.
        dim_latent: width of W.
        num_heads: number of clusters K (``--num_heads``).

    Until ``assign_pca`` is called the mean is zero and the directions are the
    first ``ndirs`` coordinate axes; both are buffers (saved, never trained).
    """

    def __init__(self, ndirs, inject_index, n_latent, dim_latent=512, num_heads=1):
        super().__init__()
        if not 1 <= ndirs <= dim_latent:
            raise UserError(f'ndirs must be between 1 and the latent width {dim_latent}, got {ndirs}')
        if not 0 <= inject_index <= n_latent:
            raise UserError(f'inject_index must be between 0 and the number of W+ entries {n_latent}, '
                            f'got {inject_index}')
        if num_heads < 1:
            raise UserError(f'num_heads must be at least 1, got {num_heads}')
        self.ndirs, self.inject_index, self.n_latent = ndirs, inject_index, n_latent
        self.dim_latent, self.num_heads = dim_latent, num_heads
        self.register_buffer('directions', torch.eye(ndirs, dim_latent))
        self.register_buffer('lat_mean', torch.zeros(1, dim_latent))
        self.coefficients = nn.Parameter(torch.zeros(num_heads, ndirs))

    def target_latents(self):
        """(K, dim) target latents c_k = lat_mean + coefficients @ directions."""
        return self.lat_mean + self.coefficients @ self.directions

    def congealing_target_latent(self, k=0):
        """(dim,) the target latent c_k of cluster ``k`` (e.g. to render it)."""
        if not 0 <= k < self.num_heads:
            raise IndexError(f'cluster {k} does not exist (num_heads={self.num_heads})')
        return self.target_latents()[k]

    def forward(self, w, psi, unfold=False):
        """Target W+ latents for samples ``w``.

        Args:
            w: (N, dim) W latents of the unaligned samples (a one-element list
               holding it is accepted too).
            psi: float or 0-dim tensor in [0, 1]; 1 gives w everywhere, 0 gives
               c_k in the first ``inject_index`` entries.
            unfold: return (N, K, n_latent, dim) instead of the flat layout.
        Returns:
            (N * K, n_latent, dim), image-major: row n * K + k is sample n with
            the target of cluster k (the order in which the spatial
            transformer lays out its heads). Differentiable in the
            coefficients (the gradient scales with 1 - psi) and in w.
        """
        if isinstance(w, (list, tuple)):
            if len(w) != 1:
                raise ValueError(f'expected one latent tensor, got {len(w)}')
            w = w[0]
        if w.dim() != 2 or w.shape[1] != self.dim_latent:
            raise ValueError(f'expected w of shape (N, {self.dim_latent}), got {tuple(w.shape)}')
        n, k = w.shape[0], self.num_heads
        targets = self.target_latents().to(w.dtype).unsqueeze(0)  # (1, K, dim)
        samples = w.unsqueeze(1)  # (N, 1, dim)
        coarse = targets + psi * (samples - targets)  # (N, K, dim)
        fine = samples.expand(n, k, self.dim_latent)
        out = torch.cat([coarse.unsqueeze(2).expand(n, k, self.inject_index, self.dim_latent),
                         fine.unsqueeze(2).expand(n, k, self.n_latent - self.inject_index, self.dim_latent)], 2)
        return out if unfold else out.reshape(n * k, self.n_latent, self.dim_latent)

    def encode(self, latents):
        """PCA coordinates (M, ndirs) of (M, dim) latents."""
        return (latents - self.lat_mean) @ self.directions.T

    @torch.no_grad()
    def assign_pca(self, pca):
        """Use a fitted PCA (``PCAResult`` or (mean, directions)); keeps the first ``ndirs`` directions."""
        mean, directions = pca[0], pca[1]
        if directions.shape[0] < self.ndirs or directions.shape[1] != self.dim_latent:
            raise ValueError(f'need at least {self.ndirs} directions of width {self.dim_latent}, '
                             f'got {tuple(directions.shape)}')
        self.lat_mean.copy_(mean.reshape(1, self.dim_latent))
        self.directions.copy_(directions[:self.ndirs])

    @torch.no_grad()
    def assign_coefficients(self, coefficients):
        """Set the (K, ndirs) coefficients."""
        self.coefficients.copy_(coefficients.reshape(self.num_heads, self.ndirs))

    @torch.no_grad()
    def assign_centroids(self, centroids):
        """Start the targets at (K, dim) latents, projected onto the PCA directions."""
        self.assign_coefficients(self.encode(centroids.to(self.lat_mean)))


@torch.no_grad()
def kmeans_plusplus_init(generator, loss_fn, num_heads, n_candidates, inject_index, batch_size=100,
                         device=None, gather_fn=None, seed=0, image_transform=None, storage_device='cpu'):
    """k-means++ seeding of the cluster targets, with a perceptual distance.

    Candidates are W samples rendered with their own coarse styles (entries
    [0, inject_index)) and the mean W's fine styles, so distances compare pose
    and shape, not appearance; fixed noise keeps renderings reproducible. The
    first centroid is a uniformly random candidate; each next one is drawn
    with probability proportional to the squared distance to its nearest
    chosen centroid. Every process renders and scores its own candidates; with
    ``gather_fn`` the latents and distances of all processes are pooled, and
    because the choices use a generator seeded with ``seed`` on pooled values,
    every process picks the same centroids.

    Args:
        generator: the generator interface (``batch_latent``, ``n_latent``,
            ``G([W+], input_is_latent=True, randomize_noise=False)``).
        loss_fn: ``loss(a, b) -> (B,)`` distances of image batches.
        num_heads: number of centroids K.
        n_candidates: candidates drawn by this process.
        inject_index: number of coarse W+ entries taken from the candidate.
        batch_size: images per generator / loss call.
        device: where to render (default: the generator's device).
        gather_fn: concatenate every process's tensor along dim 0 (default: identity).
        seed: seed of the centroid choices.
        image_transform: optional callable applied to rendered images (e.g. a
            resize to the loss's resolution) before storing and comparing.
        storage_device: where the rendered candidates are kept.
    Returns:
        (K, dim) centroid latents (distinct candidates when enough exist).
    """
    gather_fn = gather_fn or _identity
    transform = image_transform or _identity
    if device is None:
        device = next(iter(generator.parameters()), torch.empty(0)).device
    if n_candidates < 1:
        raise UserError(f'k-means++ needs at least one candidate, got {n_candidates}')
    w = draw_w_samples(generator, n_candidates, batch_size).to(device)
    mean_w = gather_fn(w.mean(0, keepdim=True)).mean(0, keepdim=True)

    def render(latents):
        coarse = latents.unsqueeze(1).expand(-1, inject_index, -1)
        fine = mean_w.unsqueeze(1).expand(latents.shape[0], generator.n_latent - inject_index, -1)
        images, _ = generator([torch.cat([coarse, fine], 1)], input_is_latent=True, randomize_noise=False)
        return transform(images)

    candidates = torch.cat([render(chunk).to(storage_device) for chunk in w.split(batch_size)])
    all_w = gather_fn(w)
    total = all_w.shape[0]
    chooser = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(total, (1,), generator=chooser))]
    closest = torch.full((total,), float('inf'), dtype=torch.float64)
    for _ in range(num_heads - 1):
        centroid_image = render(all_w[chosen[-1]].unsqueeze(0))
        distances = torch.cat([loss_fn(centroid_image.expand_as(chunk), chunk.to(device)).reshape(-1)
                               for chunk in candidates.split(batch_size)])
        closest = torch.minimum(closest, gather_fn(distances).double().cpu())
        weights = closest.clamp_min(0).pow(2)
        weights[chosen] = 0  # never pick a centroid twice, even if rendering noise makes it nonzero
        if not weights.sum() > 0:  # every remaining candidate coincides with a centroid
            weights = torch.ones(total, dtype=torch.float64)
            weights[chosen] = 0
            if not weights.sum() > 0:
                weights = torch.ones(total, dtype=torch.float64)
        chosen.append(int(torch.multinomial(weights, 1, generator=chooser)))
    return all_w[chosen].clone()
