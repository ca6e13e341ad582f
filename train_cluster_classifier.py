"""Train the cluster classifier of a clustering GANgealing model.

    python train_cluster_classifier.py --exp-name cars_cls --ckpt results/cars/checkpoints/1500000.pt \
        --real_data_path data/lsun_cars --cls_lr 0.001 --iter 50000
    torchrun --nproc_per_node=8 train_cluster_classifier.py ...

A clustering model (``--num_heads K``, optionally ``--flips``) sends each
generated sample to the head (and mirror) whose congealed output is closest to
its target. Real images have no target, so this program teaches a classifier,
on generated samples, to predict that choice from the image alone: class
``mirror * K + head``. The generator, the transformer (t_ema) and the target
(ll) come from --ckpt and stay frozen; the classifier starts from the
similarity transformer's trunk weights.

The architecture options (generator, sizes, transform, heads, flips, loss,
synthetic-world factors) default to those recorded in the checkpoint; the
training flags of train.py apply (--batch, --iter, --period, --tm, --decay,
--ckpt_every, --vis_every, ...), plus --cls_lr.

Checkpoints (``results/<exp-name>/checkpoints/NNNNNNN.pt``) hold ``classifier,
g_ema, t_ema, ll, cls_optim, cls_sched, args`` (the original's keys) plus
``iteration`` and every rank's RNG state; passing one as --ckpt resumes. SIGTERM or SIGINT: the
current iteration's checkpoint is written, then the program exits with 128 + the signal number. The
applications use the classifier of any checkpoint that has one. At the end
the classifier's agreement with the transformer on held-out samples is
printed and written to ``classifier_accuracy.json``.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn, optim

from models.cluster_classifier import ResnetClassifier, classifier_agreement
from models.gangealing import assign_samples, resize_for_stn
from models.perceptual import PERCEPTUAL_LOSSES
from options import parse_training_options
from options.agreement import check_ranks_agree
from options.resume import NOT_RESUMED
from training.building import build_models as build_training_models
from training.loop import Every, TrainingLoop, run_until_stopped, start_up_section
from training.state import checkpoint_iteration, load_generator_weights, set_rng_state, with_rng_states
from training.writer import ExperimentWriter
from utils.atomic_io import atomic_write
from utils.checkpoint import load_checkpoint
from utils.distributed import (all_gather_tensor, cleanup, get_rank, get_world_size, is_main_process,
                               seed_everything, setup_distributed)
from utils.errors import UserError, exit_on_user_error
from utils.precision import autocast
from utils.pretrained import resolve_checkpoint
from utils.schedules import DecayingCosineAnnealingWarmRestarts, zero_lr_iterations
from utils.stop_signals import Interrupted

# Options describing the trained model; unless given on the command line they
# take the values recorded in the checkpoint.
MODEL_OPTIONS = ('gen_size', 'dim_latent', 'n_mlp', 'gen_channel_multiplier', 'gen_channel_max', 'num_fp16_res',
                 'transform',
                 'flow_size', 'stn_channel_multiplier', 'stn_max_channels', 'num_heads', 'ndirs', 'inject',
                 'flips', 'loss_fn', 'real_size', 'sample_from_full_res', 'padding_mode', 'laplacian_levels',
                 'perceptual_weights', 'dataset_mode')
CLASSIFIER_CHECKPOINT_KEYS = ('classifier', 'g_ema', 't_ema', 'll', 'cls_optim', 'cls_sched', 'args')


def read_model_checkpoint(argv):
    """(path, checkpoint dict, recorded training options as a dict) of --ckpt in ``argv``."""
    scan = argparse.ArgumentParser(add_help=False)
    scan.add_argument('--ckpt', default=None)
    known, _ = scan.parse_known_args(argv)
    if not known.ckpt:
        if '-h' in argv or '--help' in argv:
            return None, None, {}
        raise UserError('--ckpt is required: the trained clustering GANgealing checkpoint whose transformer '
                        'the classifier learns from')
    path = resolve_checkpoint(known.ckpt)
    ckpt = load_checkpoint(path, map_location='cpu')
    missing = [key for key in ('g_ema', 't_ema', 'll') if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise UserError(f"checkpoint '{path}' lacks {', '.join(missing)}: give a checkpoint written by train.py "
                        f'(or by this program)')
    saved = ckpt.get('args')
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else (saved if isinstance(saved, dict) else {})
    return path, ckpt, saved


def parse_options(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    path, ckpt, saved = read_model_checkpoint(argv)
    if saved.get('generator') and not any(a == '--generator' or a.startswith('--generator=') for a in argv):
        argv = ['--generator', str(saved['generator'])] + argv

    resuming = isinstance(ckpt, dict) and 'classifier' in ckpt

    def recorded(_found, _path):
        # A classifier checkpoint continues its own run: all of its options
        # come back. A train.py checkpoint only describes the model: its
        # schedule, iteration count and seed were the transformer's and say
        # nothing about the classifier's training.
        if resuming:
            return {key: value for key, value in saved.items() if key not in NOT_RESUMED}
        return {key: value for key, value in saved.items()
                if key in MODEL_OPTIONS or key.startswith('synthetic_')}

    def adjust(parser):
        parser.add_argument('--cls_lr', type=float, default=saved.get('cls_lr', 0.001) if resuming else 0.001,
                            help='base learning rate of the cluster classifier')

    opt = parse_training_options(argv, adjust_parser=adjust, saved_options=recorded)
    if not opt.cls_lr > 0:
        raise UserError(f'--cls_lr must be positive, got {opt.cls_lr}')
    if opt.num_heads * (1 + int(opt.flips)) < 2:
        raise UserError('this model has one head and no --flips: there is nothing for a cluster classifier to '
                        'choose between')
    if 'similarity' != opt.transform[0]:
        raise UserError('the classifier starts from the similarity transformer, and --transform '
                        f"{' '.join(opt.transform)} has no similarity stage first")
    return opt, path, ckpt


def build_models(opt, ckpt, path, device):
    """Frozen generator, t_ema and ll from the checkpoint; the classifier (initialised
    from the similarity stage, or resumed) with its optimiser and schedule."""
    generator, _, t_ema, ll = build_training_models(opt, torch.device('cpu'))
    load_generator_weights(generator, ckpt, path)
    t_ema.load_state_dict(ckpt['t_ema'])
    try:
        ll.load_state_dict(ckpt['ll'])
    except RuntimeError as e:
        raise UserError(f"the target ('ll') in {path} does not fit --ndirs {opt.ndirs} --inject {opt.inject} "
                        f'--num_heads {opt.num_heads}: {str(e).splitlines()[0]}') from None
    classifier = ResnetClassifier(opt.flow_size, channel_multiplier=opt.stn_channel_multiplier,
                                  num_heads=opt.num_heads * (1 + int(opt.flips)), supersize=opt.real_size,
                                  flips=opt.flips, max_channels=opt.stn_max_channels)
    similarity = t_ema.stns[0] if hasattr(t_ema, 'stns') else t_ema
    classifier.load_state_dict(similarity.state_dict(), strict=False)  # the trunk's shared layers
    for module in (generator, t_ema, ll):
        module.to(device).eval().requires_grad_(False)
    classifier = classifier.to(device)
    cls_optim = optim.Adam(classifier.parameters(), lr=opt.cls_lr)
    cls_sched = DecayingCosineAnnealingWarmRestarts(cls_optim, T_0=1, T_mult=opt.tm, decay=opt.decay)
    start_iter = 0
    if 'classifier' in ckpt:  # resume
        classifier.load_state_dict(ckpt['classifier'])
        try:
            cls_optim.load_state_dict(ckpt['cls_optim'])
            cls_sched.load_state_dict(ckpt['cls_sched'])
        except (KeyError, ValueError) as e:
            raise UserError(f'{path} holds a classifier but not its optimiser state ({e}); it cannot be resumed') \
                from None
        start_iter = checkpoint_iteration(ckpt, path)
        if is_main_process():
            print(f'Resuming cluster classifier training from {path} at iteration {start_iter}')
    return generator, t_ema, ll, classifier, cls_optim, cls_sched, start_iter


class ClassifierVisuals:
    """Per-cluster grids: samples (and real images) the classifier assigns to each
    cluster, mirrored as it says, and their congealed versions with that head."""

    def __init__(self, opt, writer, device):
        from datasets.modes import DATASET_MODES
        self.opt, self.writer, self.device = opt, writer, device
        self.reals = None
        if getattr(opt, 'real_data_path', None) or opt.dataset_mode == 'synthetic':
            dataset = DATASET_MODES.get(opt.dataset_mode).build_images(opt, 'train')
            if dataset is not None and len(dataset):
                self.reals = torch.stack([dataset[i] for i in range(min(opt.n_sample, len(dataset)))])
        self.z = torch.randn(opt.n_sample, opt.dim_latent, generator=torch.Generator().manual_seed(opt.seed))

    def log(self, generator, t_ema, classifier, step):
        # Its own random stream: a resumed run draws the same training batches as an uninterrupted one.
        devices = [self.device] if self.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self._log(generator, t_ema, classifier, step)

    def _log(self, generator, t_ema, classifier, step):
        if self.writer is None:
            return
        opt = self.opt
        samples, _ = generator([self.z.to(self.device)])
        groups = [('sample', samples)] + ([('real', self.reals.to(self.device))] if self.reals is not None else [])
        for name, images in groups:
            inputs, _, classes, _ = classifier.run_flip(images)
            heads = classes % classifier.num_clusters
            stn_in = resize_for_stn(inputs, opt.flow_size)
            congealed = t_ema(stn_in, input_img_for_sampling=inputs, output_resolution=opt.flow_size,
                              warp_policy=heads, padding_mode=opt.padding_mode)
            for k in range(classifier.num_clusters):
                members = heads == k
                if members.any():
                    self.writer.grid(resize_for_stn(inputs[members], opt.flow_size), f'classifier_{name}_cluster{k}',
                                     step)
                    self.writer.grid(congealed[members], f'classifier_{name}_cluster{k}_congealed', step)
        self.writer.flush()


@exit_on_user_error
def main(argv=None):
    run_until_stopped(train, argv)


def train(stop, argv=None):
    with start_up_section(stop):
        run = start_up(argv)
    run_iterations(run, stop)
    try:
        with stop.interruptible():
            evaluate(run)
    except Interrupted as e:
        e.detail = f'during the final evaluation; the final checkpoint is {run.last_good}'
        raise
    cleanup()


class Run:
    """What start-up builds and the loop uses."""


def start_up(argv):
    opt, path, ckpt = parse_options(argv)
    device, _, world_size = setup_distributed(opt.device)
    check_ranks_agree(opt)
    run = Run()
    run.opt, run.device = opt, device
    run.exp_dir = os.path.join(opt.results, opt.exp_name)
    run.ckpt_dir = os.path.join(run.exp_dir, 'checkpoints')
    if is_main_process():
        os.makedirs(run.ckpt_dir, exist_ok=True)
    seed_everything(opt.seed)
    run.loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt).to(device)
    (run.generator, run.t_ema, run.ll, run.classifier_module, run.cls_optim, run.cls_sched,
     run.start_iter) = build_models(opt, ckpt, path, device)
    run.last_good = path if run.start_iter else None
    saved_rng = {key: ckpt[key] for key in ('rng_state', 'rank_rng_states') if 'classifier' in ckpt and key in ckpt}
    del ckpt
    run.classifier = run.classifier_module
    if world_size > 1:
        run.classifier = nn.parallel.DistributedDataParallel(
            run.classifier_module, device_ids=[device.index] if device.type == 'cuda' else None)
    run.writer = ExperimentWriter(run.exp_dir) if is_main_process() else None
    run.visuals = ClassifierVisuals(opt, run.writer, device)
    if run.start_iter == 0:
        run.visuals.log(run.generator, run.t_ema, run.classifier_module, 0)
    else:  # restored last, after everything that draws random numbers while setting up
        set_rng_state(saved_rng, opt.seed, run.start_iter)
    return run


def checkpoint_content(run, iteration, rng_states):
    """The original's keys (classifier, g_ema, t_ema, ll, cls_optim, cls_sched, args) plus iteration and
    every rank's RNG state."""
    content = {'classifier': run.classifier_module.state_dict(), 'g_ema': run.generator.state_dict(),
               't_ema': run.t_ema.state_dict(), 'll': run.ll.state_dict(), 'cls_optim': run.cls_optim.state_dict(),
               'cls_sched': run.cls_sched.state_dict(), 'args': run.opt, 'iteration': iteration}
    return with_rng_states(content, rng_states)


def run_iterations(run, stop):
    opt, device = run.opt, run.device
    num_classes = run.classifier_module.num_heads
    loop = TrainingLoop(stop, device, run.start_iter, opt.iter, run.ckpt_dir,
                        lambda i, rng_states: checkpoint_content(run, i, rng_states),
                        Every(opt.ckpt_every, opt.vis_every, opt.log_every,
                              frozenset(zero_lr_iterations(0, opt.period, opt.iter, opt.tm))),
                        advice='Try a lower --cls_lr or resume from that checkpoint.', last_good=run.last_good)
    for i in loop.iterations():
        with autocast(opt.precision, device):  # labels and classifier at --precision, as train.py's step
            x, target, _ = assign_samples(run.generator, run.t_ema, run.ll, run.loss_fn, opt.batch, opt.flow_size,
                                          opt.num_heads, opt.flips, opt.sample_from_full_res,
                                          padding_mode=opt.padding_mode)
            logits = run.classifier(resize_for_stn(x, opt.flow_size)).float()
        loss = F.cross_entropy(logits, target)
        run.cls_optim.zero_grad(set_to_none=True)
        loss.backward()
        run.cls_optim.step()
        run.cls_sched.step(i / opt.period)
        loop.track(loss, (run.classifier_module,))

        predicted = logits.detach().argmax(dim=1)
        parts = {'cross_entropy': loss, 'accuracy': (predicted == target).float().mean()}
        assigned = torch.bincount(target, minlength=num_classes).float() / opt.batch
        chosen = torch.bincount(predicted, minlength=num_classes).float() / opt.batch
        parts.update({f'head_{k}': assigned[k] for k in range(num_classes)})
        parts.update({f'pred_head_{k}': chosen[k] for k in range(num_classes)})
        check = loop.check(i, parts)
        run.last_good = loop.last_good
        if check is None:
            continue
        values = check.values
        loop.describe(i, f"cross entropy {values['cross_entropy']:.4f} accuracy {values['accuracy']:.3f}")
        if is_main_process() and check.log:
            run.writer.scalar('Loss/CrossEntropy', values['cross_entropy'], i)
            run.writer.scalar('Loss/Accuracy@1', values['accuracy'], i)
            for k in range(num_classes):
                run.writer.scalar(f'Assignments/transformer_head_{k}', values[f'head_{k}'], i)
                run.writer.scalar(f'Assignments/classifier_head_{k}', values[f'pred_head_{k}'], i)
            run.writer.scalar('Progress/LearningRate', run.cls_sched.get_last_lr()[0], i)
        if check.show:
            with loop.showing(check):
                run.visuals.log(run.generator, run.t_ema, run.classifier_module, i)
    loop.close()
    run.last_good = loop.last_good


def evaluate(run):
    """The classifier's agreement with the transformer on held-out samples: printed and written to
    classifier_accuracy.json."""
    opt, device = run.opt, run.device
    run.classifier_module.eval()
    n_eval = max(opt.batch, opt.n_mean // get_world_size())  # --debug has made --n_mean 200
    with autocast(opt.precision, device):
        result = classifier_agreement(run.classifier_module, run.generator, run.t_ema, run.ll, run.loss_fn, n_eval,
                                      opt.vis_batch_size, opt.flow_size, opt.num_heads, opt.flips,
                                      opt.sample_from_full_res, seed=opt.seed * get_world_size() + get_rank(),
                                      padding_mode=opt.padding_mode)
    counts = all_gather_tensor(torch.tensor([[result['accuracy'] * result['samples'],
                                              result['cluster_accuracy'] * result['samples'],
                                              result['samples']]], dtype=torch.float64, device=device)).sum(0)
    if is_main_process():
        summary = {'accuracy': float(counts[0] / counts[2]), 'cluster_accuracy': float(counts[1] / counts[2]),
                   'held_out_samples': int(counts[2])}
        print(f"classifier agreement with the transformer on {summary['held_out_samples']} held-out samples: "
              f"{summary['accuracy']:.3f} (cluster alone: {summary['cluster_accuracy']:.3f})")
        atomic_write(os.path.join(run.exp_dir, 'classifier_accuracy.json'),
                     lambda f: f.write(json.dumps(summary, indent=2)), mode='w')
        run.writer.close()

if __name__ == '__main__':
    main()
