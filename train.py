"""GANgealing training.

    python train.py --exp-name demo                      # synthetic world, CPU, minutes
    torchrun --nproc_per_node=8 train.py --exp-name cats --ckpt cat --load_G_only ...

    torchrun --nproc_per_node=8 --max-restarts=3 train.py --exp-name cats ... --resume

The same program runs in one process and under torchrun (DDP: NCCL on CUDA,
gloo on CPU); only rank 0 writes files and logs. ``--resume`` continues from
the experiment's newest checkpoint. SIGTERM or SIGINT stops every rank within
seconds: once training has started, the current iteration's checkpoint is
written first; the exit status is 128 + the signal number.
"""
import copy
import os
from types import SimpleNamespace

import torch
from torch import nn, optim

from models import get_stn
from models.gangealing import congeal_samples, resize_for_stn, sample_pairs
from models.generators import GENERATORS
from models.latent_learner import DirectionInterpolator, kmeans_plusplus_init, pca_W
from models.losses import gangealing_cluster_loss
from models.perceptual import PERCEPTUAL_LOSSES
from models.spatial_transformers import trunk_width
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distributed import (all_gather_tensor, cleanup, gather_objects, get_world_size, is_main_process,
                               seed_everything, setup_distributed)
from utils.errors import UserError, exit_on_user_error
from utils.options import parse_training_options
from utils.pretrained import resolve_checkpoint
from utils.schedules import DecayingCosineAnnealingWarmRestarts, anneal_psi, zero_lr_iterations
from utils.progress import Progress
from utils.stop_signals import Interrupted, StopRequested
from utils.training_state import (CHECKPOINT_FORMAT_VERSION, checkpoint_iteration, checkpoint_name, get_rng_state,
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


def nonfinite_flags(loss, modules):
    """Which of (loss, gradients, weights) hold a NaN or an infinity, as a (3,) float tensor of 0/1.

    Computed on the loss's device without a host synchronisation (one fused
    max-abs per tensor list), so an asynchronous device keeps its queue full.
    """
    params = [p for module in modules for p in module.parameters()]
    grads = [p.grad for p in params if p.grad is not None]

    def any_nonfinite(tensors):
        if not tensors:
            return loss.new_zeros(())
        # max |x| is NaN or inf exactly when some element is.
        largest = torch.stack([n.to(loss.device, torch.float32) for n in torch._foreach_norm(tensors, float('inf'))])
        return (~torch.isfinite(largest)).any().float()
    return torch.stack([(~torch.isfinite(loss.detach())).float(), any_nonfinite(grads), any_nonfinite(params)])


def agree(health, signal_number, losses):
    """One collective for what every rank must know at a check.

    Args:
        health: (3,) flags of this rank (``nonfinite_flags``, accumulated since the last check).
        signal_number: the stop signal this rank received (0: none).
        losses: (K,) this rank's loss values.
    Returns:
        (health flags of any rank as a list of bools, the largest signal number
        of any rank (0: keep going), the losses averaged over ranks as floats).
    """
    local = torch.cat([health.float(), health.new_tensor([float(signal_number)]), losses.detach().float()])
    every = all_gather_tensor(local.unsqueeze(0))  # (world size, 4 + K)
    worst, mean = every.max(0).values.tolist(), every.mean(0).tolist()
    return [flag > 0 for flag in worst[:3]], int(worst[3]), mean[4:]


# Where the device runs ahead of the host (CUDA), the flags are read every this
# many iterations instead of after each one.
ASYNC_CHECK_EVERY = 10
LOSS_NAMES = ('reconstruction', 'total_variation', 'flow_identity')


@exit_on_user_error
def main():
    with StopRequested() as stop:
        try:
            train(stop)
        except Interrupted as e:
            if is_main_process():
                print(f'\nStopped by signal {e.signum} {e.detail}'.rstrip(), flush=True)
            cleanup()
            raise SystemExit(128 + e.signum) from None


def train(stop):
    """Parse the options and run training; ``stop`` is the active StopRequested."""
    with stop.interruptible():  # start-up: nothing to save yet
        try:
            opt, state = start_up(stop)
        except Interrupted as e:
            e.detail = 'during start-up, before training; nothing was saved'
            raise
    run_iterations(opt, state, stop)

    exp_dir = state.exp_dir
    try:
        with stop.interruptible():
            evaluate_alignment(opt, state.t_ema, state.writer, state.device, exp_dir)
    except Interrupted as e:
        e.detail = f'during the final evaluation; the final checkpoint is {state.last_good}'
        raise
    if state.writer is not None:
        state.writer.close()
    if is_main_process():
        print(f'Done. Checkpoints: {state.ckpt_dir} (newest: {os.path.basename(state.last_good or "none")}); '
              f'image grids: {exp_dir}/*.png'
              + (f'; PCK-Transfer: {os.path.join(exp_dir, "pck.json")}'
                 if os.path.exists(os.path.join(exp_dir, 'pck.json')) else ''), flush=True)
    cleanup()


class TrainingState(SimpleNamespace):
    """What start-up builds and the loop uses (models, optimisers, writers, paths)."""


def start_up(stop):
    """Options, process group, models, optimisers, the starting checkpoint and the first visuals."""
    opt = parse_training_options()
    device, _, world_size = setup_distributed(opt.device)
    exp_dir = os.path.join(opt.results, opt.exp_name)
    ckpt_dir = os.path.join(exp_dir, 'checkpoints')
    if is_main_process():
        os.makedirs(ckpt_dir, exist_ok=True)
        print(f'Experiment folder: {exp_dir} (options, image grids, pck.json; checkpoints in {ckpt_dir})\n'
              f'Follow it with: tensorboard --logdir {exp_dir}', flush=True)
    seed_everything(opt.seed)
    # First, so a wrong --real_data_path is refused before the long initialisation.
    visuals = TrainingVisuals(opt, None, device)

    generator, stn, t_ema, ll = build_models(opt, device)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    t_optim, ll_optim, t_sched, ll_sched = build_optimizers(opt, stn, ll)

    # Start: a full GANgealing checkpoint resumes; a generator-only one starts fresh.
    start_iter, last_good = 0, None
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
        start_iter, last_good = checkpoint_iteration(ckpt, ckpt_path), ckpt_path
        set_rng_state(ckpt, opt.seed, start_iter)
        if is_main_process():
            print(f'Resuming from {ckpt_path} at iteration {start_iter}', flush=True)
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

    # A resumed run hides the events its predecessor logged after the checkpoint.
    writer = ExperimentWriter(exp_dir, purge_step=start_iter + 1 if start_iter else None) \
        if is_main_process() else None
    # Its own generator: the training stream's RNG state (restored on resume) stays untouched.
    vis_z = torch.randn(opt.n_sample, generator.style_dim,
                        generator=torch.Generator().manual_seed(opt.seed)).to(device)
    visuals.writer = writer
    state = TrainingState(device=device, exp_dir=exp_dir, ckpt_dir=ckpt_dir, generator=generator, stn=stn,
                          stn_module=stn_module, t_ema=t_ema, ll=ll, ll_module=ll_module, loss_fn=loss_fn,
                          t_optim=t_optim, ll_optim=ll_optim, t_sched=t_sched, ll_sched=ll_sched,
                          writer=writer, vis_z=vis_z, visuals=visuals, start_iter=start_iter,
                          last_good=last_good)
    if start_iter == 0:
        visuals.log(generator, t_ema, ll_module, loss_fn, vis_z, anneal_psi(0, opt.anneal_psi, opt.anneal_fn), 0)
    return opt, state


def save(opt, state, iteration, rng_states):
    """Write the checkpoint of ``iteration`` (main process only); ``rng_states``: every rank's."""
    if not is_main_process():
        return
    s = state
    path = os.path.join(s.ckpt_dir, checkpoint_name(iteration))
    content = {'g_ema': s.generator.state_dict(), 't': s.stn_module.state_dict(), 't_ema': s.t_ema.state_dict(),
               't_optim': s.t_optim.state_dict(), 't_sched': s.t_sched.state_dict(),
               'll': s.ll_module.state_dict(), 'll_optim': s.ll_optim.state_dict(),
               'll_sched': s.ll_sched.state_dict(), 'args': opt, 'iteration': iteration,
               'rng_state': rng_states[0], 'format_version': CHECKPOINT_FORMAT_VERSION}
    if len(rng_states) > 1:
        content['rank_rng_states'] = rng_states
    try:
        save_checkpoint(content, path)
    except OSError as e:
        raise UserError(f'cannot write the checkpoint {path}: {e.strerror or e}; training stopped at iteration '
                        f'{iteration}. The previous checkpoint ({s.last_good or "none yet"}) is intact: free '
                        f'space (or choose another --results) and continue with --resume') from None
    s.last_good = path


def run_iterations(opt, s, stop):
    """Iterations ``s.start_iter + 1 .. opt.iter``: step, check, log, save, show."""
    checkpoint_iters = set(zero_lr_iterations(opt.anneal_psi, opt.period, opt.iter, opt.tm))
    check_every = 1 if s.device.type == 'cpu' else ASYNC_CHECK_EVERY
    progress = Progress(s.start_iter, opt.iter, enabled=is_main_process())
    health = torch.zeros(3, device=s.device)
    last_check = s.start_iter
    s.stn.train()
    for i in range(s.start_iter + 1, opt.iter + 1):
        psi = anneal_psi(i, opt.anneal_psi, opt.anneal_fn)
        terms = training_step(opt, s.generator, s.stn, s.ll, s.loss_fn, psi)
        s.t_optim.zero_grad(set_to_none=True)
        s.ll_optim.zero_grad(set_to_none=True)
        terms.total.backward()
        s.t_optim.step()
        if not opt.freeze_ll:
            s.ll_optim.step()
        if i > opt.anneal_psi:  # the learning-rate schedule starts once psi has reached 0
            epoch = (i - opt.anneal_psi) / opt.period
            s.t_sched.step(epoch)
            s.ll_sched.step(epoch)
        accumulate(s.t_ema, s.stn_module, EMA_DECAY)
        health = torch.maximum(health, nonfinite_flags(terms.total, (s.stn_module, s.ll_module)))

        due_save = i % opt.ckpt_every == 0 or i in checkpoint_iters or i == opt.iter
        due_vis = i % opt.vis_every == 0 or i == opt.iter
        due_log = i % opt.log_every == 0 or i in checkpoint_iters
        if not (due_save or due_vis or due_log or i % check_every == 0):
            progress.update(i)
            continue
        # Every rank reaches this point at the same iterations: one collective decides for all.
        losses = torch.stack([terms.perceptual, terms.total_variation, terms.flow_identity]).detach()
        bad, signal_number, values = agree(health, stop.signal or 0, losses)
        if any(bad):
            what = ', '.join(name for name, flag in zip(('the loss', 'the gradients', 'the weights'), bad) if flag)
            when = f'iteration {i}' if last_check == i - 1 else f'iterations {last_check + 1}-{i}'
            raise UserError(f'{what} became non-finite at {when}; nothing was saved for it. The last good '
                            f'checkpoint is {s.last_good or "(none yet)"}. Try a lower --stn_lr / --ll_lr or '
                            f'resume from that checkpoint.')
        last_check = i
        values = dict(zip(LOSS_NAMES, values))
        progress.update(i, f"rec {values['reconstruction']:.4f} tv {values['total_variation']:.5f} "
                           f"id {values['flow_identity']:.4f} psi {psi:.3f}")
        if is_main_process() and due_log:
            for name, value in values.items():
                s.writer.scalar(f'Loss/{name}', value, i)
            s.writer.scalar('Progress/psi', psi, i)
            s.writer.scalar('Progress/STN_LearningRate', s.t_sched.get_last_lr()[0], i)
            s.writer.scalar('Progress/LL_LearningRate', s.ll_sched.get_last_lr()[0], i)
            s.writer.scalar('Progress/iterations_per_second', progress.rate, i)
        if not (due_save or due_vis or signal_number):
            continue
        rng_states = gather_objects(get_rng_state())  # collective: at the same iterations on every rank
        if due_save or signal_number:
            save(opt, s, i, rng_states)
        if signal_number:
            progress.close()
            raise Interrupted(signal_number, f'at iteration {i}; checkpoint saved in {s.ckpt_dir}')
        if not due_vis:
            continue
        try:
            with stop.interruptible():
                s.visuals.log(s.generator, s.t_ema, s.ll_module, s.loss_fn, s.vis_z, psi, i)
        except Interrupted as e:
            if not due_save:
                save(opt, s, i, rng_states)
            progress.close()
            e.detail = f'at iteration {i} (during the visuals); checkpoint saved in {s.ckpt_dir}'
            raise
    progress.close()


if __name__ == '__main__':
    main()
