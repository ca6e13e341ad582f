"""GAN-supervised pairs and the per-step GANgealing objective.

A pair is an unaligned sample x = G(w) and its congealing target y = G(w+),
where w+ takes the target's coarse (pose) entries and x's fine (appearance)
entries (see models.latent_learner). The spatial transformer learns T(x) ~ y.
"""
import torch
import torch.nn.functional as F

from utils.distributed import all_gather_tensor


def resize_for_stn(images, size):
    """Anti-aliased bilinear resize of (N, C, H, W) generator output to (size, size)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False,
                         antialias=images.shape[-1] > size)


def sample_pairs(generator, ll, psi, batch, flow_size, z=None, freeze_ll=False, return_w=False):
    """Draw unaligned samples and their congealing targets.

    Args:
        generator: frozen generator (interface of models.Generator).
        ll: the target learner; ``ll(w, psi)`` maps (N, style_dim) w to the
            target W+ (N * num_heads, n_latent, style_dim), image-major.
        psi: 1 = the target is the sample itself, 0 = the learned target pose.
        flow_size: resolution the targets are resized to (the STN's output).
        z: optional (N, style_dim) latents; random when None.
        return_w: also return the samples' w (N, style_dim).
    Returns:
        x (N, 3, gen_size, gen_size) unaligned samples in [-1, 1] (no gradient),
        y (N * num_heads, 3, flow_size, flow_size) targets (differentiable in
        the target coefficients unless ``freeze_ll``) [, w (N, style_dim)].
    """
    device = next(ll.parameters()).device
    if z is None:
        z = torch.randn(batch, generator.style_dim, device=device)
    with torch.no_grad():
        x, w_plus = generator([z], return_latents=True)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_ll):
        target_latents = ll(w_plus[:, 0], psi)
        # Noise is re-randomised between the two generator calls, as in the original method.
        y, _ = generator([target_latents], input_is_latent=True)
        y = resize_for_stn(y, flow_size)
    return (x, y, w_plus[:, 0]) if return_w else (x, y)


def reposed_samples(generator, w, inject, size):
    """The samples of ``w`` with the coarse (pose) entries of other random samples.

    Args:
        w: (N, style_dim) the samples' latents.
        inject: W+ entries [0, inject) come from the other samples (``--inject``).
        size: output resolution.
    Returns:
        (N, 3, size, size) images in [-1, 1], no gradient.
    """
    with torch.no_grad():
        other = generator.get_latent(torch.randn_like(w))
        n_latent = generator.n_latent
        latents = torch.cat([other.unsqueeze(1).expand(-1, inject, -1),
                             w.unsqueeze(1).expand(-1, n_latent - inject, -1)], 1)
        images, _ = generator([latents], input_is_latent=True)
        return resize_for_stn(images, size)


def change_weights(x, y, strength, blur=5, reposed=None):
    """Per-pixel loss weights from where samples and their targets differ.

    A target keeps its sample's appearance and moves the object to the target
    pose, so the two differ where the object was or now is, and little over
    a background they share: weighing the loss there keeps an unmatchable
    scene from pinning the warp. Uses no labels (any generator).

    With ``reposed`` (the samples under other random poses, see
    ``reposed_samples``) the difference is the smaller of |x - y| and
    |reposed - y|: both are large only where the *target* has its object,
    so the place the sample's object left (where the target shows scene,
    which no warp of the sample can match) is no longer weighed up.

    Args:
        x: (N, 3, s, s) samples at the targets' resolution.
        y: (N * K, 3, s, s) targets, image-major (K heads per sample).
        strength: A in [0, 1]; 0 gives weights of 1.
        blur: box blur (pixels) of the difference map.
        reposed: optional (N, 3, s, s) samples under other poses.
    Returns:
        (N * K, 1, s, s) weights, (1 - A) + A * d / mean(d) per image (no gradient).
    """
    with torch.no_grad():
        heads = y.shape[0] // x.shape[0]
        d = (x.repeat_interleave(heads, 0) - y).abs().mean(1, keepdim=True)
        if reposed is not None:
            d = torch.minimum(d, (reposed.repeat_interleave(heads, 0) - y).abs().mean(1, keepdim=True))
        d = F.avg_pool2d(d, blur, stride=1, padding=blur // 2, count_include_pad=False)
        d = d / (d.mean(dim=(2, 3), keepdim=True) + 1e-3)
        return (1 - strength) + strength * d


def congeal_samples(stn, x, flow_size, sample_from_full_res, flips=False, **stn_kwargs):
    """Warp generator samples with every head (and their mirrors with ``flips``).

    Args:
        x: (N, 3, gen_size, gen_size) samples.
    Returns:
        aligned ((1 + flips) * N * num_heads, 3, flow_size, flow_size), ordered
        (mirror, image, head); the residual flow (same leading size, flow_size,
        flow_size, 2), or the (.., 2, 3) similarity matrices for a
        similarity-only transformer.
    """
    if flips:
        x = torch.cat([x, x.flip(3)], 0)
    source = x if sample_from_full_res else None
    aligned, flow = stn(resize_for_stn(x, flow_size), return_flow=True,
                        input_img_for_sampling=source, output_resolution=flow_size, **stn_kwargs)
    return aligned, flow


@torch.no_grad()
def assign_samples(generator, stn, ll, loss_fn, batch, flow_size, num_heads, flips=False,
                   sample_from_full_res=False, z=None, **stn_kwargs):
    """Generate samples and find the (mirror, head) the transformer assigns each to.

    The assignment is the trainer's: the pair whose congealed output is
    closest (``loss_fn``) to the sample's target, at psi = 0.

    Returns:
        x (N, 3, gen_size, gen_size) samples, indices (N,) long assignments
        ``mirror * num_heads + head``, distances (N, (1 + flips) * num_heads)
        to every (mirror, head).
    """
    from models.losses import nearest_cluster

    x, y = sample_pairs(generator, ll, 0.0, batch, flow_size, z=z, freeze_ll=True)
    aligned, _ = congeal_samples(stn, x, flow_size, sample_from_full_res, flips=flips, **stn_kwargs)
    if flips:
        y = y.repeat(2, 1, 1, 1)
    distances = loss_fn(aligned, y)
    _, indices = nearest_cluster(distances, batch, num_heads, flips)
    per_input = distances.reshape(1 + int(flips), batch, num_heads).transpose(0, 1).reshape(batch, -1)
    return x, indices, per_input


class CongealedMean:
    """Running per-group sum of congealed images, averaged over every rank.

    Groups are cluster heads (one group for a single-head transformer). Each rank
    adds its own images; ``result`` is collective: every rank must call it.
    """

    def __init__(self, groups, channels, size, device):
        self.sums = torch.zeros(groups, channels, size, size, device=device)
        self.counts = torch.zeros(groups, device=device)

    def add(self, images, groups=None):
        """Add images (N, C, S, S) to their groups ((N,) long in [0, groups); None: group 0)."""
        if groups is None:
            groups = torch.zeros(images.size(0), dtype=torch.long, device=images.device)
        self.sums.index_add_(0, groups, images.to(self.sums.dtype))
        self.counts += torch.bincount(groups, minlength=self.counts.numel()).to(self.counts.dtype)

    def result(self):
        """(means (groups, C, S, S), counts (groups,)) over every rank; an empty group's mean is 0."""
        sums = all_gather_tensor(self.sums.unsqueeze(0)).sum(0)
        counts = all_gather_tensor(self.counts.unsqueeze(0)).sum(0)
        return sums / counts.clamp_min(1).view(-1, 1, 1, 1), counts


@torch.no_grad()
def congealed_mean(t, batches, device, **stn_kwargs):
    """Average of every head's congealed images over ``batches`` on every rank.

    Args:
        t: spatial transformer (any number of heads).
        batches: iterable of (B, 3, S, S) images in [-1, 1], this rank's share.
        stn_kwargs: passed to ``t`` (padding_mode, output_resolution, ...).
    Returns:
        (mean (K, 3, s, s), K the number of heads, and the first congealed batch
        on this rank (B, K, 3, s, s), or None when this rank had no images).
        Collective: every rank must call it.
    """
    mean, first = None, None
    for x in batches:
        out = t(x.to(device), unfold=True, **stn_kwargs)  # (B, K, 3, s, s)
        if out.dim() == 4:
            out = out.unsqueeze(1)
        if mean is None:
            mean, first = CongealedMean(out.size(1), out.size(2), out.size(-1), device), out
        heads = torch.arange(out.size(1), device=device).repeat(out.size(0))
        mean.add(out.flatten(0, 1), heads)
    if mean is None:
        raise ValueError('congealed_mean needs at least one batch on every rank')
    return mean.result()[0], first
