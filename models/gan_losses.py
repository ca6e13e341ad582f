"""StyleGAN2's adversarial objectives: non-saturating logistic loss, R1 and path-length regularisers.

Formulas (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", 2020; Mescheder et al. 2018 for R1):
- discriminator: E[softplus(D(fake))] + E[softplus(-D(real))];
- generator: E[softplus(-D(G(z)))];
- R1: E[||grad_x D(x)||^2] on real images (weighted gamma / 2 by the caller);
- path length: for y ~ N(0, I) / sqrt(H W), the length ||J_w^T y|| of the
  generator's Jacobian-vector product per sample, pulled towards its running
  mean a: E[(||J_w^T y|| - a)^2].
"""
import math

import torch
from torch import autograd
import torch.nn.functional as F

__all__ = ['d_logistic_loss', 'g_nonsaturating_loss', 'r1_penalty', 'path_length_penalty',
           'PATH_LENGTH_DECAY']

# Weight of the newest batch in the running mean of path lengths.
PATH_LENGTH_DECAY = 0.01


def d_logistic_loss(real_logits, fake_logits):
    """Discriminator loss: softplus(-real).mean() + softplus(fake).mean() (a scalar)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits):
    """Generator loss: softplus(-fake).mean() (a scalar)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits, real_images):
    """E over the batch of the squared norm of d(sum of real logits)/d(real images).

    ``real_images`` must require gradients and ``real_logits`` depend on them;
    the result keeps the graph (create_graph) so it can be minimised.
    """
    grad, = autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def path_length_penalty(images, latents, mean_path_length, decay=PATH_LENGTH_DECAY):
    """Path-length regulariser of images (N, 3, H, W) generated from W+ latents (N, L, D).

    Returns (penalty scalar with graph, new running mean (float tensor, detached),
    per-sample path lengths (N,) detached).
    """
    noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    grad, = autograd.grad((images * noise).sum(), latents, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    new_mean = mean_path_length + decay * (lengths.mean().detach() - mean_path_length)
    penalty = (lengths - new_mean).pow(2).mean()
    return penalty, new_mean, lengths.detach()
