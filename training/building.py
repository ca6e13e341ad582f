"""Everything a GANgealing run is made of, built from its options: models, optimisers, the initial target."""
import copy

import torch
from torch import optim

from models import get_stn
from models.gangealing import resize_for_stn
from models.generators import GENERATORS
from models.latent_learner import DirectionInterpolator, kmeans_plusplus_init, pca_W
from models.spatial_transformers import trunk_width
from utils.distributed import all_gather_tensor, get_world_size
from utils.schedules import DecayingCosineAnnealingWarmRestarts

# Device types with a fused (one-kernel) Adam step; the CPU one arrived in torch 2.4.
FUSED_ADAM_DEVICES = ('cpu', 'cuda') if torch.__version__ >= (2, 4) else ('cuda',)

# On a CPU, oneDNN runs an STN of at most this many channels 5-15% faster with
# channels-last weights, and wider ones (the original's 512) up to 25% slower.
CHANNELS_LAST_MAX_WIDTH = 128


def build_models(opt, device):
    """Generator (frozen), STN, its EMA copy and the target learner, on ``device``."""
    generator = GENERATORS.get(opt.generator).build(opt)
    stn = get_stn(opt.transform, flow_size=opt.flow_size, supersize=opt.real_size,
                  channel_multiplier=opt.stn_channel_multiplier, num_heads=opt.num_heads,
                  max_channels=opt.stn_max_channels)
    ll = DirectionInterpolator(opt.ndirs, opt.inject, generator.n_latent, generator.style_dim,
                               num_heads=opt.num_heads)
    generator, stn, ll = generator.to(device), stn.to(device), ll.to(device)
    if device.type == 'cpu' and trunk_width(stn.state_dict()) <= CHANNELS_LAST_MAX_WIDTH:
        stn = stn.to(memory_format=torch.channels_last)
    generator.eval().requires_grad_(False)
    t_ema = copy.deepcopy(stn).eval().requires_grad_(False)
    return generator, stn, t_ema, ll


def build_optimizers(opt, stn, ll):
    """Adam for the STN and for the target coefficients, each with its warm-restart schedule.

    Returns (t_optim, ll_optim, t_sched, ll_sched). The schedulers count in
    periods (``step((iteration - anneal_psi) / period)``), as the original's.
    """
    def adam(module, lr):
        params = list(module.parameters())
        # The fused step is one kernel instead of ~10 ops per tensor (5x faster on a CPU).
        fused = all(p.device.type in FUSED_ADAM_DEVICES and p.dtype == torch.float32 for p in params)
        return optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)

    t_optim, ll_optim = adam(stn, opt.stn_lr), adam(ll, opt.ll_lr)
    t_sched = DecayingCosineAnnealingWarmRestarts(t_optim, T_0=1, T_mult=opt.tm, decay=opt.decay)
    ll_sched = DecayingCosineAnnealingWarmRestarts(ll_optim, T_0=1, T_mult=opt.tm, decay=opt.decay)
    return t_optim, ll_optim, t_sched, ll_sched


def load_optimizer_state(optimizer, state):
    """Resume ``optimizer`` from ``state`` but keep its own kernel choice: a
    checkpoint written where the fused step ran may resume where it cannot."""
    kernels = [{key: group.get(key) for key in ('fused', 'foreach')} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, kernels):
        group.update(own)


def initialise_target(opt, generator, ll, loss_fn, device):
    """PCA of W (samples from every rank) and, for clustering, k-means++ centroids."""
    n_pca = (1000 if opt.debug else opt.n_pca) // get_world_size()
    ll.assign_pca(pca_W(generator, n_pca, opt.ndirs, gather_fn=all_gather_tensor))
    if opt.num_heads > 1:
        # Candidates are compared at the STN's resolution (memory: they are kept on the CPU).
        n_candidates = (200 if opt.debug else opt.kmeans_candidates) // get_world_size()
        centroids = kmeans_plusplus_init(generator, loss_fn, opt.num_heads, n_candidates, opt.inject,
                                         batch_size=opt.vis_batch_size, device=device,
                                         gather_fn=all_gather_tensor, seed=opt.seed,
                                         image_transform=lambda images: resize_for_stn(images, opt.flow_size))
        ll.assign_centroids(centroids)
