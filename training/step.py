"""One training iteration's objective (the EMA update that follows each step is training/ema.py)."""
import torch

from models.gangealing import change_weights, congeal_samples, reposed_samples, resize_for_stn, sample_pairs
from models.losses import LossTerms, gangealing_cluster_loss
from utils.compilation import compiled
from utils.precision import autocast


def step_modules(opt, generator, stn, loss_fn):
    """(generator, stn, loss_fn) as ``training_step`` should call them.

    With ``opt.compile`` each is a torch.compile view sharing the module's weights
    (see utils.compilation; the plain modules stay for checkpoints and visuals);
    without it, the modules themselves.
    """
    enabled = getattr(opt, 'compile', False)
    return (compiled(generator, 'generator', enabled), compiled(stn, 'spatial transformer', enabled),
            compiled(loss_fn, 'perceptual loss', enabled))


def training_step(opt, generator, stn, ll, loss_fn, psi):
    """One evaluation of the GANgealing objective; returns LossTerms of scalars.

    Every head warps every input (and its mirror with --flips); each input keeps
    its smallest distance and only that pair's flow is regularised. The forward
    pass runs at ``opt.precision`` (see utils.precision); the returned terms are
    float32 (call ``backward`` outside this function, as autocast wants).
    """
    device = next(stn.parameters()).device
    with autocast(getattr(opt, 'precision', 'fp32'), device):
        terms = _objective(opt, generator, stn, ll, loss_fn, psi)
    return LossTerms(*(term.float() for term in terms))


def _objective(opt, generator, stn, ll, loss_fn, psi):
    strength = getattr(opt, 'change_weighting', 0.0)
    localise = strength > 0 and getattr(opt, 'change_weighting_target', False)
    x, y, *w = sample_pairs(generator, ll, psi, opt.batch, opt.flow_size, freeze_ll=opt.freeze_ll, return_w=localise)
    aligned, flow = congeal_samples(stn, x, opt.flow_size, opt.sample_from_full_res, flips=opt.flips,
                                    padding_mode=opt.padding_mode)
    if opt.flips:
        y = y.repeat(2, 1, 1, 1)
    if strength > 0:  # both sides weighted alike: a linear loss compares the weighted residual
        copies = 1 + int(opt.flips)
        reposed = reposed_samples(generator, w[0], opt.inject, opt.flow_size).repeat(copies, 1, 1, 1) if localise else None
        weights = change_weights(resize_for_stn(x, opt.flow_size).repeat(copies, 1, 1, 1), y, strength,
                                 reposed=reposed)
        aligned, y = aligned * weights, y * weights
    distances = loss_fn(aligned, y)
    delta_flow = flow if 'flow' in opt.transform else None
    terms, _ = gangealing_cluster_loss(distances, delta_flow, opt.batch, opt.num_heads, opt.flips,
                                       opt.tv_weight, opt.flow_identity_weight)
    return terms
