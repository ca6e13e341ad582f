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
import os
from types import SimpleNamespace

import torch
from torch import nn

from models.perceptual import PERCEPTUAL_LOSSES
from training.building import build_models, build_optimizers, initialise_target, load_optimizer_state
from options import parse_training_options
from options.agreement import check_ranks_agree
from training.ema import EMA_DECAY, accumulate
from training.loop import Every, TrainingLoop, run_until_stopped, start_up_section
from training.report import TrainingVisuals, evaluate_alignment
from training.state import (CHECKPOINT_FORMAT_VERSION, checkpoint_iteration, load_generator_weights, set_rng_state,
                            with_rng_states)
from training.step import step_modules, training_step
from training.writer import ExperimentWriter
from utils.checkpoint import load_checkpoint
from utils.distributed import cleanup, is_main_process, seed_everything, setup_distributed
from utils.errors import UserError, WeightsMismatchError, exit_on_user_error
from utils.pretrained import resolve_checkpoint
from utils.schedules import anneal_psi, zero_lr_iterations
from utils.stop_signals import Interrupted

LOSS_NAMES = ('reconstruction', 'total_variation', 'flow_identity')


@exit_on_user_error
def main():
    run_until_stopped(train)


def train(stop):
    """Parse the options and run training; ``stop`` is the active StopRequested."""
    with start_up_section(stop):
        opt, state = start_up(stop)
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
    check_ranks_agree(opt)
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
        except (RuntimeError, ValueError, KeyError, WeightsMismatchError) as e:
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


def checkpoint_content(opt, s, iteration, rng_states):
    """The checkpoint of ``iteration``: the original's keys plus iteration, RNG states and format version."""
    content = {'g_ema': s.generator.state_dict(), 't': s.stn_module.state_dict(), 't_ema': s.t_ema.state_dict(),
               't_optim': s.t_optim.state_dict(), 't_sched': s.t_sched.state_dict(),
               'll': s.ll_module.state_dict(), 'll_optim': s.ll_optim.state_dict(),
               'll_sched': s.ll_sched.state_dict(), 'args': opt, 'iteration': iteration,
               'format_version': CHECKPOINT_FORMAT_VERSION}
    return with_rng_states(content, rng_states)


def run_iterations(opt, s, stop):
    """Iterations ``s.start_iter + 1 .. opt.iter``: step, check, log, save, show."""
    every = Every(opt.ckpt_every, opt.vis_every, opt.log_every,
                  frozenset(zero_lr_iterations(opt.anneal_psi, opt.period, opt.iter, opt.tm)))
    loop = TrainingLoop(stop, s.device, s.start_iter, opt.iter, s.ckpt_dir,
                        lambda i, rng_states: checkpoint_content(opt, s, i, rng_states), every,
                        advice='Try a lower --stn_lr / --ll_lr or resume from that checkpoint.',
                        last_good=s.last_good)
    s.stn.train()
    step_generator, step_stn, step_loss_fn = step_modules(opt, s.generator, s.stn, s.loss_fn)
    for i in loop.iterations():
        psi = anneal_psi(i, opt.anneal_psi, opt.anneal_fn)
        terms = training_step(opt, step_generator, step_stn, s.ll, step_loss_fn, psi)
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
        loop.track(terms.total, (s.stn_module, s.ll_module))

        check = loop.check(i, dict(zip(LOSS_NAMES, (terms.perceptual, terms.total_variation, terms.flow_identity))))
        s.last_good = loop.last_good
        if check is None:
            continue
        values = check.values
        loop.describe(i, f"rec {values['reconstruction']:.4f} tv {values['total_variation']:.5f} "
                         f"id {values['flow_identity']:.4f} psi {psi:.3f}")
        if is_main_process() and check.log:
            for name, value in values.items():
                s.writer.scalar(f'Loss/{name}', value, i)
            s.writer.scalar('Progress/psi', psi, i)
            s.writer.scalar('Progress/STN_LearningRate', s.t_sched.get_last_lr()[0], i)
            s.writer.scalar('Progress/LL_LearningRate', s.ll_sched.get_last_lr()[0], i)
            s.writer.scalar('Progress/iterations_per_second', loop.rate, i)
        if check.show:
            with loop.showing(check):
                s.visuals.log(s.generator, s.t_ema, s.ll_module, s.loss_fn, s.vis_z, psi, i)
    loop.close()
    s.last_good = loop.last_good

if __name__ == '__main__':
    main()
