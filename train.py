"""GANgealing training.

    python train.py --exp-name demo                      # synthetic world, CPU, minutes
    torchrun --nproc_per_node=8 train.py --exp-name cats --ckpt cat --load_G_only ...

The same program runs in one process and under torchrun (DDP: NCCL on CUDA,
gloo on CPU); only rank 0 writes files and logs.
"""
import copy
import os
import signal

import torch
from torch import nn, optim
from tqdm import tqdm

from models import get_stn
from models.gangealing import congeal_samples, resize_for_stn, sample_pairs
from models.generators import GENERATORS
from models.latent_learner import DirectionInterpolator, kmeans_plusplus_init, pca_W
from models.losses import gangealing_cluster_loss
from models.perceptual import PERCEPTUAL_LOSSES
from models.spatial_transformers import trunk_width
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distributed import (all_gather_tensor, all_reduce_mean, cleanup, get_world_size, is_main_process,
                               reduce_loss_dict, seed_everything, setup_distributed)
from utils.errors import UserError, exit_on_user_error
from utils.options import parse_training_options
from utils.pretrained import resolve_checkpoint
from utils.schedules import DecayingCosineAnnealingWarmRestarts, anneal_psi, zero_lr_iterations
from utils.training_state import (CHECKPOINT_FORMAT_VERSION, checkpoint_iteration, get_rng_state,
                                  load_generator_weights, set_rng_state)
from utils.training_vis import ExperimentWriter
from utils.training_report import TrainingVisuals, evaluate_alignment

EMA_DECAY = 0.5 ** (32 / (10 * 1000))  # per iteration, as in the original recipe
# Device types with a fused (one-kernel) Adam step; the CPU one arrived in torch 2.4.
FUSED_ADAM_DEVICES = ('cpu', 'cuda') if torch.__version__ >= (2, 4) else ('cuda',)


def accumulate(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)


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


class StopRequested:
    """Turns SIGTERM/SIGINT into a flag checked once per iteration (checkpoint, then exit)."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum


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


def training_step(opt, generator, stn, ll, loss_fn, psi):
    """One evaluation of the GANgealing objective; returns LossTerms of scalars.

    Every head warps every input (and its mirror with --flips); each input keeps
    its smallest distance and only that pair's flow is regularised.
    """
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


@exit_on_user_error
def main():
    opt = parse_training_options()
    device, rank, world_size = setup_distributed(opt.device)
    exp_dir = os.path.join(opt.results, opt.exp_name)
    ckpt_dir = os.path.join(exp_dir, 'checkpoints')
    if is_main_process():
        os.makedirs(ckpt_dir, exist_ok=True)
    seed_everything(opt.seed)

    generator, stn, t_ema, ll = build_models(opt, device)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    t_optim, ll_optim, t_sched, ll_sched = build_optimizers(opt, stn, ll)

    # Start: a full GANgealing checkpoint resumes; a generator-only one starts fresh.
    start_iter = 0
    ckpt_path = resolve_checkpoint(opt.ckpt) if opt.ckpt else None
    ckpt = load_checkpoint(ckpt_path, map_location='cpu') if ckpt_path else None
    if ckpt is not None:
        load_generator_weights(generator, ckpt, ckpt_path)
    if ckpt is not None and not opt.load_G_only and 't' in ckpt:
        try:
            stn.load_state_dict(ckpt['t'])
            t_ema.load_state_dict(ckpt['t_ema'])
            ll.load_state_dict(ckpt['ll'])
            load_optimizer_state(t_optim, ckpt['t_optim'])
            load_optimizer_state(ll_optim, ckpt['ll_optim'])
            t_sched.load_state_dict(ckpt['t_sched'])
            ll_sched.load_state_dict(ckpt['ll_sched'])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f'{ckpt_path} was trained with another configuration ({first}); resume with its '
                            f'flags (--transform, --flow_size, --stn_channel_multiplier, --stn_max_channels, '
                            f'--num_heads, --ndirs, --inject), or pass --load_G_only to start afresh from its '
                            f'generator') from None
        start_iter = checkpoint_iteration(ckpt, ckpt_path)
        set_rng_state(ckpt.get('rng_state'), opt.seed, start_iter)
        if is_main_process():
            print(f'Resuming from {ckpt_path} at iteration {start_iter}')
    else:
        initialise_target(opt, generator, ll, loss_fn, device)
    del ckpt

    stn_module, ll_module = stn, ll
    if world_size > 1:
        device_ids = [device.index] if device.type == 'cuda' else None
        # DDP copies rank 0's initial weights to every rank (t_ema follows below).
        stn = nn.parallel.DistributedDataParallel(stn, device_ids=device_ids)
        if not opt.freeze_ll:
            ll = nn.parallel.DistributedDataParallel(ll, device_ids=device_ids)
    if start_iter == 0:
        accumulate(t_ema, stn_module, 0)
    if opt.freeze_ll:
        ll_module.requires_grad_(False)

    writer = ExperimentWriter(exp_dir) if is_main_process() else None
    # Its own generator: the training stream's RNG state (restored on resume) stays untouched.
    vis_z = torch.randn(opt.n_sample, generator.style_dim,
                        generator=torch.Generator().manual_seed(opt.seed)).to(device)
    checkpoint_iters = set(zero_lr_iterations(opt.anneal_psi, opt.period, opt.iter, opt.tm))

    def save(iteration, name=None):
        if not is_main_process():
            return
        state = {'g_ema': generator.state_dict(), 't': stn_module.state_dict(), 't_ema': t_ema.state_dict(),
                 't_optim': t_optim.state_dict(), 't_sched': t_sched.state_dict(), 'll': ll_module.state_dict(),
                 'll_optim': ll_optim.state_dict(), 'll_sched': ll_sched.state_dict(), 'args': opt,
                 'iteration': iteration, 'rng_state': get_rng_state(), 'format_version': CHECKPOINT_FORMAT_VERSION}
        save_checkpoint(state, os.path.join(ckpt_dir, f'{name or f"{iteration:07d}"}.pt'))

    visuals = TrainingVisuals(opt, writer, device)

    def visualise(iteration, psi):
        visuals.log(generator, t_ema, ll_module, loss_fn, vis_z, psi, iteration)

    stop = StopRequested()
    psi = anneal_psi(start_iter, opt.anneal_psi, opt.anneal_fn)
    if start_iter == 0:
        visualise(0, psi)
    pbar = range(start_iter + 1, opt.iter + 1)
    if is_main_process():
        pbar = tqdm(pbar, initial=start_iter, total=opt.iter, dynamic_ncols=True, smoothing=0.1)
    stn.train()
    last_good = None
    for i in pbar:
        psi = anneal_psi(i, opt.anneal_psi, opt.anneal_fn)
        terms = training_step(opt, generator, stn, ll, loss_fn, psi)
        loss = terms.total
        parts = {'reconstruction': terms.perceptual, 'total_variation': terms.total_variation,
                 'flow_identity': terms.flow_identity}

        # A non-finite loss on any rank stops every rank, keeping the last good checkpoint.
        if all_reduce_mean(torch.isfinite(loss.detach()).float()).item() < 1:
            raise UserError(f'the loss became non-finite at iteration {i}; nothing was saved for this '
                            f'iteration. The last good checkpoint is {last_good or "(none yet)"}. Try a lower '
                            f'--stn_lr / --ll_lr or resume from that checkpoint.')

        t_optim.zero_grad(set_to_none=True)
        ll_optim.zero_grad(set_to_none=True)
        loss.backward()
        t_optim.step()
        if not opt.freeze_ll:
            ll_optim.step()
        if i > opt.anneal_psi:  # the learning-rate schedule starts once psi has reached 0
            epoch = (i - opt.anneal_psi) / opt.period
            t_sched.step(epoch)
            ll_sched.step(epoch)
        accumulate(t_ema, stn_module, EMA_DECAY)

        reduced = reduce_loss_dict(parts)
        if is_main_process():
            values = {k: v.item() for k, v in reduced.items()}
            pbar.set_description(f"rec {values['reconstruction']:.4f} tv {values['total_variation']:.5f} "
                                 f"id {values['flow_identity']:.4f} psi {psi:.3f}")
            if i % opt.log_every == 0 or i in checkpoint_iters:
                for name, value in values.items():
                    writer.scalar(f'Loss/{name}', value, i)
                writer.scalar('Progress/psi', psi, i)
                writer.scalar('Progress/STN_LearningRate', t_sched.get_last_lr()[0], i)
                writer.scalar('Progress/LL_LearningRate', ll_sched.get_last_lr()[0], i)
                writer.scalar('Progress/iterations_per_second', pbar.format_dict.get('rate') or 0.0, i)
        if i % opt.ckpt_every == 0 or i in checkpoint_iters or i == opt.iter:
            save(i)
            last_good = os.path.join(ckpt_dir, f'{i:07d}.pt')
        if i % opt.vis_every == 0 or i == opt.iter:
            visualise(i, psi)
        if stop.signal is not None:
            save(i)
            if is_main_process():
                print(f'\nStopped by signal {stop.signal} at iteration {i}; checkpoint saved in {ckpt_dir}')
            cleanup()
            raise SystemExit(128 + stop.signal)

    if is_main_process():
        pbar.close()
    evaluate_alignment(opt, t_ema, writer, device, exp_dir)
    if writer is not None:
        writer.close()
    cleanup()


if __name__ == '__main__':
    main()
