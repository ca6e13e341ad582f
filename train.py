"""GANgealing training.

    python train.py --exp-name demo                      # synthetic world, CPU, minutes
    torchrun --nproc_per_node=8 train.py --exp-name cats --ckpt cat --load_G_only ...

The same program runs in one process and under torchrun (DDP: NCCL on CUDA,
gloo on CPU); only rank 0 writes files and logs.
"""
import os
import signal

import torch
from torch import nn
from tqdm import tqdm

from models.perceptual import PERCEPTUAL_LOSSES
from training.building import build_models, build_optimizers, initialise_target, load_optimizer_state
from training.report import TrainingVisuals, evaluate_alignment
from training.state import (CHECKPOINT_FORMAT_VERSION, checkpoint_iteration, get_rng_state, load_generator_weights,
                            set_rng_state)
from training.step import EMA_DECAY, accumulate, training_step
from training.writer import ExperimentWriter
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.distributed import (all_reduce_mean, cleanup, is_main_process, reduce_loss_dict, seed_everything,
                               setup_distributed)
from utils.errors import UserError, WeightsMismatchError, exit_on_user_error
from utils.options import parse_training_options
from utils.pretrained import resolve_checkpoint
from utils.schedules import anneal_psi, zero_lr_iterations


class StopRequested:
    """Turns SIGTERM/SIGINT into a flag checked once per iteration (checkpoint, then exit)."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum


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
        except (RuntimeError, ValueError, KeyError, WeightsMismatchError) as e:
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
