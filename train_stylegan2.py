"""Train a StyleGAN2 on your own images, for GANgealing to align through afterwards.

    python prepare_data.py --path my_images/ --out data/mine --size 64
    python train_stylegan2.py --exp-name mine --real_data_path data/mine --size 64 --batch 16
    torchrun --nproc_per_node=8 train_stylegan2.py --exp-name mine ... --resume
    python train.py --exp-name align_mine --ckpt results/mine/checkpoints/0800000.pt --load_G_only \\
        --gen_size 64 --dim_latent 512 --n_mlp 8 --real_data_path data/mine --real_size 64 ...

Checkpoints (<results>/<exp-name>/checkpoints/NNNNNNN.pt) hold rosinality's
keys ``g, d, g_ema, g_optim, d_optim, args, ada_aug_p`` plus the iteration,
RNG states and running statistics, so ``--resume`` continues exactly. One
process or torchrun DDP (NCCL on CUDA, gloo on CPU); only rank 0 writes.
SIGTERM or SIGINT: the current iteration's checkpoint is written, then the
program exits with 128 + the signal number.
"""
import os
import sys

import torch
from torch import nn

from options.agreement import check_ranks_agree
from options.stylegan2_flags import parse_stylegan2_options
from training.gan_trainer import (Networks, RunningState, batch_loader, build_networks, check_checkpoint_architecture,
                                  checkpoint_content, lazy_adam, load_training_checkpoint, train_iteration,
                                  training_images)
from training.loop import Every, TrainingLoop, run_until_stopped, start_up_section
from training.state import checkpoint_iteration, set_rng_state
from training.writer import ExperimentWriter
from utils.checkpoint import load_checkpoint
from utils.distributed import cleanup, is_main_process, seed_everything, setup_distributed
from utils.errors import UserError, exit_on_user_error

LOSS_NAMES = ('d', 'g', 'r1', 'path', 'path_length', 'real_score', 'fake_score')


@exit_on_user_error
def main(argv=None):
    run_until_stopped(train, argv)


def train(stop, argv=None):
    with start_up_section(stop):
        run = start_up(argv)
    run_iterations(run, stop)
    if run.writer is not None:
        run.writer.close()
    if is_main_process():
        print(f'Done. Checkpoints: {run.ckpt_dir} (newest: {os.path.basename(run.last_good or "none")}); '
              f'sample grids: {run.exp_dir}/sample_*.png', flush=True)
    cleanup()


class Run:
    """What start-up builds and the loop uses."""


def check_inputs(opt, ckpt_path):
    """The data and the checkpoint to start from, checked before anything is written; returns the dataset."""
    dataset = training_images(opt.real_data_path, opt.size)
    if ckpt_path:
        check_checkpoint_architecture(load_checkpoint(ckpt_path, map_location='cpu'), ckpt_path, opt)
    return dataset


def start_up(argv):
    opt, ckpt_path, dataset = parse_stylegan2_options(argv, before_save=check_inputs)
    device, _, world_size = setup_distributed(opt.device)
    check_ranks_agree(opt, checkpoint=ckpt_path)
    run = Run()
    run.opt, run.device = opt, device
    run.exp_dir = os.path.join(opt.results, opt.exp_name)
    run.ckpt_dir = os.path.join(run.exp_dir, 'checkpoints')
    if is_main_process():
        os.makedirs(run.ckpt_dir, exist_ok=True)
        print(f'{len(dataset)} training images at {opt.size} px. Experiment folder: {run.exp_dir}\n'
              f'Follow it with: tensorboard --logdir {run.exp_dir}', flush=True)
    seed_everything(opt.seed)

    generator, discriminator, g_ema = build_networks(opt, device)
    g_optim = lazy_adam(generator, opt.lr, opt.g_reg_every)
    d_optim = lazy_adam(discriminator, opt.lr, opt.d_reg_every)
    g, d = generator, discriminator
    if world_size > 1:
        device_ids = [device.index] if device.type == 'cuda' else None
        # Rank 0's initial weights reach every rank; buffers (blur kernels, noise) never change.
        g = nn.parallel.DistributedDataParallel(generator, device_ids=device_ids, broadcast_buffers=False)
        d = nn.parallel.DistributedDataParallel(discriminator, device_ids=device_ids, broadcast_buffers=False)
    run.nets = Networks(g, d, generator, discriminator, g_ema, g_optim, d_optim)
    run.state = RunningState(opt, device)

    run.start_iter, run.last_good = 0, None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path, map_location='cpu')
        load_training_checkpoint(ckpt, ckpt_path, run.nets, run.state)
        run.start_iter, run.last_good = checkpoint_iteration(ckpt, ckpt_path), ckpt_path
        if run.start_iter >= opt.iter:
            raise UserError(f'{ckpt_path} is at iteration {run.start_iter}, not before --iter {opt.iter}; '
                            f'raise --iter to train further')
        set_rng_state(ckpt, opt.seed, run.start_iter)
        if is_main_process():
            print(f'Resuming from {ckpt_path} at iteration {run.start_iter}', flush=True)
        del ckpt
    else:  # g_ema starts as the generator after DDP's broadcast of rank 0's weights
        g_ema.load_state_dict(generator.state_dict())

    run.loader = batch_loader(dataset, opt, run.start_iter)
    run.writer = ExperimentWriter(run.exp_dir, purge_step=run.start_iter + 1 if run.start_iter else None) \
        if is_main_process() else None
    # Fixed latents of the sample grids, from their own generator (the training RNG stays untouched).
    run.sample_z = torch.randn(opt.n_sample, opt.latent,
                               generator=torch.Generator().manual_seed(opt.seed)).to(device)
    return run


@torch.no_grad()
def log_samples(run, iteration):
    if not is_main_process():
        return
    # Stored noise maps: the grids change only with the weights, and the training RNG is not drawn from.
    images = torch.cat([run.nets.g_ema([z], randomize_noise=False)[0] for z in run.sample_z.split(64)])
    run.writer.grid(images, 'sample', iteration)


def run_iterations(run, stop):
    opt, nets, state = run.opt, run.nets, run.state
    loop = TrainingLoop(stop, run.device, run.start_iter, opt.iter, run.ckpt_dir,
                        lambda i, rng_states: checkpoint_content(opt, nets, state, i, rng_states),
                        Every(opt.ckpt_every, opt.vis_every, opt.log_every),
                        advice='Try a lower --lr or resume from it.', last_good=run.last_good)
    nets.g.train()
    nets.d.train()
    for i, real in zip(loop.iterations(), run.loader):
        real = real.to(run.device, non_blocking=True)
        terms = train_iteration(opt, nets, state, real, i)
        loop.track(terms['d'] + terms['g'], (nets.g_module, nets.d_module))

        check = loop.check(i, {name: terms[name] for name in LOSS_NAMES})
        run.last_good = loop.last_good
        if check is None:
            continue
        values = check.values
        loop.describe(i, f"d {values['d']:.3f} g {values['g']:.3f} r1 {values['r1']:.3f} "
                         f"path {values['path']:.3f} p {state.p:.3f}")
        if is_main_process() and check.log:
            for name in ('d', 'g', 'r1', 'path'):
                run.writer.scalar(f'Loss/{name}', values[name], i)
            run.writer.scalar('Scores/real', values['real_score'], i)
            run.writer.scalar('Scores/fake', values['fake_score'], i)
            run.writer.scalar('Progress/mean_path_length', float(state.mean_path_length), i)
            run.writer.scalar('Progress/augment_p', state.p, i)
            if state.ada is not None:
                run.writer.scalar('Progress/ada_r_t', state.ada.r_t, i)
            run.writer.scalar('Progress/iterations_per_second', loop.rate, i)
        if check.show:
            with loop.showing(check, 'samples'):
                log_samples(run, i)
    loop.close()
    run.last_good = loop.last_good

if __name__ == '__main__':
    main(sys.argv[1:])
