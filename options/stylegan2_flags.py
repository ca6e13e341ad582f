"""Options of train_stylegan2.py: rosinality's StyleGAN2 trainer flags (names and defaults), plus ours.

rosinality's names: --size, --iter, --batch, --n_sample, --r1, --path_regularize,
--path_batch_shrink, --d_reg_every, --g_reg_every, --mixing, --ckpt, --lr,
--channel_multiplier, --augment, --augment_p, --ada_target, --ada_length,
--ada_every (and --latent, --n_mlp, which its trainer fixes at 512 and 8).
Ours, as in train.py: --exp-name, --results, --real_data_path, --ckpt_every,
--vis_every, --log_every, --resume, --device, --seed, --num_workers, plus
--channel_max (narrow models) and --num_fp16_res.

``--resume`` continues from the experiment's newest checkpoint; its saved
options become the defaults (flags typed again win), as in train.py.
"""
import argparse
import math
import os
import sys

from options.persistence import format_options, save_options
from options.resume import latest_readable_checkpoint
from options.run_flags import add_experiment_flags, add_interval_flags, add_runtime_flags
from options.validation import is_power_of_two
from utils.argparse_tools import explicitly_given, flag_name, preliminary_values
from utils.distributed import is_main_process

# Options that say where and how this process runs, never taken from a checkpoint.
NOT_RESUMED = ('exp_name', 'results', 'ckpt', 'resume', 'device', 'local_rank', 'num_workers', 'real_data_path')
# Options that only matter with adaptive augmentation (--augment with --augment_p 0).
ADAPTIVE_ONLY = ('ada_target', 'ada_length', 'ada_every')


def stylegan2_parser():
    """The complete parser of train_stylegan2.py."""
    parser = argparse.ArgumentParser(description='Train a StyleGAN2 (generator + residual discriminator) on '
                                                 'an LMDB made by prepare_data.py or a folder of images',
                                     allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = parser.add_argument_group('experiment')
    add_experiment_flags(run, ckpt_help='start from this StyleGAN2 checkpoint (g, d, g_ema, g_optim, d_optim), '
                                        'continuing its iteration count')
    run.add_argument('--real_data_path', type=str, default=None,
                     help='training images: an LMDB folder made by prepare_data.py (it must hold --size) '
                          'or a folder of image files (at least --size pixels on each side)')
    run.add_argument('--batch', type=int, default=16, help='batch size per process')
    add_runtime_flags(run)

    arch = parser.add_argument_group('architecture')
    arch.add_argument('--size', type=int, default=256, help='image resolution (a power of two)')
    arch.add_argument('--latent', type=int, default=512, help='width of z and W (train.py: --dim_latent)')
    arch.add_argument('--n_mlp', type=int, default=8, help='layers of the mapping network')
    arch.add_argument('--channel_multiplier', type=int, default=2,
                      help='width multiplier of resolutions >= 64 (train.py: --gen_channel_multiplier)')
    arch.add_argument('--channel_max', type=int, default=512,
                      help='cap on every width of both networks (train.py: --gen_channel_max); '
                           'small values make a CPU-sized model')
    arch.add_argument('--num_fp16_res', type=int, default=0,
                      help="run the generator's last N resolutions in float16 on CUDA")

    objective = parser.add_argument_group('objective')
    objective.add_argument('--lr', type=float, default=0.002, help='learning rate of both networks')
    objective.add_argument('--r1', type=float, default=10.0, help='weight of the R1 regulariser')
    objective.add_argument('--path_regularize', type=float, default=2.0,
                           help='weight of the path-length regulariser')
    objective.add_argument('--path_batch_shrink', type=int, default=2,
                           help='the path-length batch is --batch divided by this')
    objective.add_argument('--d_reg_every', type=int, default=16, help='iterations between R1 steps')
    objective.add_argument('--g_reg_every', type=int, default=4, help='iterations between path-length steps')
    objective.add_argument('--mixing', type=float, default=0.9, help='probability of style mixing')

    aug = parser.add_argument_group('differentiable augmentation (ADA-style)')
    aug.add_argument('--augment', action='store_true', help='augment what the discriminator sees')
    aug.add_argument('--augment_p', type=float, default=0.0,
                     help='fixed augmentation probability; 0: adapt it (--ada_target)')
    aug.add_argument('--ada_target', type=float, default=0.6,
                     help='target E[sign(D(real))] of the adaptive probability')
    aug.add_argument('--ada_length', type=int, default=500 * 1000,
                     help='images over which the adaptive probability can go from 0 to 1')
    aug.add_argument('--ada_every', type=int, default=256, help='iterations between adjustments of p')

    out = parser.add_argument_group('logging, samples and checkpoints')
    add_interval_flags(out, vis_help='iterations between sample grids (from fixed latents)')
    parser.set_defaults(vis_every=2000, ckpt_every=10000, log_every=100)
    return parser


def _resume_source(parser, argv):
    """(checkpoint path or None, its saved options {dest: value}) for --resume / --ckpt."""
    values = preliminary_values(parser, argv, ['exp_name', 'results', 'resume', 'ckpt'])
    if values['resume'] and values['exp_name']:
        latest = latest_readable_checkpoint(values['results'], values['exp_name'])
        if latest is not None:
            return latest[0], _saved(latest[1])
    if values['ckpt']:  # the start of a run (with --resume: until it has checkpoints of its own)
        return values['ckpt'], {}
    return None, {}


def _saved(ckpt):
    args = ckpt.get('args') if isinstance(ckpt, dict) else None
    if not isinstance(args, argparse.Namespace):
        return {}
    return {dest: value for dest, value in vars(args).items() if dest not in NOT_RESUMED}


def _problems(opt, parser, explicit):
    flag = lambda dest: flag_name(parser, dest)  # noqa: E731
    problems = []
    for dest, value in sorted(vars(opt).items()):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f'{flag(dest)} must be a finite number (got {value})')
    if not is_power_of_two(opt.size) or opt.size < 8 or opt.size > 1024:
        problems.append(f'--size must be a power of two from 8 to 1024 (got {opt.size})')
    for dest in ('iter', 'batch', 'latent', 'n_mlp', 'channel_multiplier', 'channel_max', 'path_batch_shrink',
                 'd_reg_every', 'g_reg_every', 'ada_length', 'ada_every', 'n_sample', 'vis_every', 'ckpt_every',
                 'log_every'):
        if getattr(opt, dest) < 1:
            problems.append(f'{flag(dest)} must be at least 1 (got {getattr(opt, dest)})')
    for dest in ('r1', 'path_regularize', 'num_workers', 'num_fp16_res', 'seed'):
        if getattr(opt, dest) < 0:
            problems.append(f'{flag(dest)} must be at least 0 (got {getattr(opt, dest)})')
    if not opt.lr > 0:
        problems.append(f'--lr must be greater than 0 (got {opt.lr})')
    for dest in ('mixing', 'augment_p', 'ada_target'):
        if not 0 <= getattr(opt, dest) <= 1:
            problems.append(f'{flag(dest)} must be in [0, 1] (got {getattr(opt, dest)})')
    if not opt.real_data_path:
        problems.append('--real_data_path is required: an LMDB made by prepare_data.py or a folder of images')
    elif not os.path.exists(opt.real_data_path):
        problems.append(f'--real_data_path {opt.real_data_path} does not exist')
    if not opt.augment:
        typed = [flag(d) for d in ('augment_p',) + ADAPTIVE_ONLY if d in explicit]
        if typed:
            problems.append(f'{", ".join(typed)} only apply with --augment; add --augment or drop them')
    elif opt.augment_p > 0:
        typed = [flag(d) for d in ADAPTIVE_ONLY if d in explicit]
        if typed:
            problems.append(f'{", ".join(typed)} only apply to the adaptive probability (--augment_p 0); '
                            f'drop them or set --augment_p 0')
    if opt.exp_name in ('', '.', '..') or os.sep in opt.exp_name:
        problems.append(f'--exp-name must be a plain folder name (got {opt.exp_name!r})')
    return problems


def parse_stylegan2_options(argv=None, save=True, before_save=None):
    """Parse, validate, print and (main process) save the options of train_stylegan2.py.

    ``before_save(opt, path)``, when given, runs before anything is written
    (checks that read the data and the checkpoint ``path`` to start from), so
    a refused run leaves no experiment folder behind.
    Returns (opt, checkpoint path to start from or None, before_save's result).
    Bad options end the program through argparse (usage, one error line, exit status 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = stylegan2_parser()
    path, saved = _resume_source(parser, argv)
    if saved:
        parser.set_defaults(**{dest: value for dest, value in saved.items()
                               if any(a.dest == dest for a in parser._actions)})
    opt = parser.parse_args(argv)
    explicit = explicitly_given(parser, argv)
    problems = _problems(opt, parser, explicit)
    if problems:
        parser.error('; '.join(problems))
    if is_main_process():
        print(format_options(opt, parser), end='', flush=True)
        if saved:
            print(f'Options not given on the command line are those saved in {path}', flush=True)
        elif opt.resume and not path:
            print('--resume: no checkpoint of this experiment yet; starting from the beginning', flush=True)
    checked = before_save(opt, path) if before_save is not None else None
    if save:
        save_options(opt, parser, os.path.join(opt.results, opt.exp_name))
    return opt, path, checked
