"""Distances between two sets of feature vectors: Fréchet distance and kernel distance.

Fréchet distance (FID's formula): ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))
of Gaussians fitted to the two sets; biased for small sets (it grows as the
sample shrinks), so compare values computed with the same counts.
Kernel distance (KID's formula): the unbiased squared MMD with the cubic
polynomial kernel k(x, y) = (x . y / d + 1)^3; unbiased, so two samples of
the same distribution give about 0 at any count.
"""
import torch

from metrics import METRICS

__all__ = ['frechet_distance', 'kernel_distance']


@METRICS.register('frechet_distance')
def frechet_distance(a, b):
    """Fréchet distance between feature sets a (N, D) and b (M, D); a float."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((C_a C_b)^(1/2)) = sum of sqrt of the eigenvalues of C_a^(1/2) C_b C_a^(1/2) (symmetric PSD).
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


@METRICS.register('kernel_distance')
def kernel_distance(a, b):
    """Unbiased squared MMD between a (N, D) and b (M, D) (N, M >= 2) with the cubic polynomial kernel."""
    a, b = a.double(), b.double()
    d = a.shape[1]
    k_aa = (a @ a.T / d + 1) ** 3
    k_bb = (b @ b.T / d + 1) ** 3
    k_ab = (a @ b.T / d + 1) ** 3
    n, m = a.shape[0], b.shape[0]
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * k_ab.mean())
