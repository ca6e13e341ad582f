"""One training iteration's objective, and the EMA update that follows each step."""
import torch

from models.gangealing import congeal_samples, sample_pairs
from models.losses import LossTerms, gangealing_cluster_loss
from utils.precision import autocast

EMA_DECAY = 0.5 ** (32 / (10 * 1000))  # per iteration, as in the original recipe


def accumulate(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)


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
    x, y = sample_pairs(generator, ll, psi, opt.batch, opt.flow_size, freeze_ll=opt.freeze_ll)
    aligned, flow = congeal_samples(stn, x, opt.flow_size, opt.sample_from_full_res, flips=opt.flips,
                                    padding_mode=opt.padding_mode)
    if opt.flips:
        y = y.repeat(2, 1, 1, 1)
    distances = loss_fn(aligned, y)
    delta_flow = flow if 'flow' in opt.transform else None
    terms, _ = gangealing_cluster_loss(distances, delta_flow, opt.batch, opt.num_heads, opt.flips,
                                       opt.tv_weight, opt.flow_identity_weight)
    return terms
