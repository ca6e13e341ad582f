"""The static option tiers: base flags (training and evaluation), then each phase's own.

Flags of the original GANgealing trainer keep their names and defaults, so
published recipes run unchanged. Components (generator, perceptual loss,
dataset mode) add their flags later, see ``options.components``.
"""
import argparse

from datasets.modes import DATASET_MODES
from models.generators import GENERATORS
from models.perceptual import PERCEPTUAL_LOSSES
from models.spatial_transformers.sampling import PADDING_MODES
from models.spatial_transformers.transformer import TRANSFORMS
from options.run_flags import add_experiment_flags, add_interval_flags, add_runtime_flags
from utils.precision import PRECISIONS
from utils.schedules import ANNEAL_FUNCTIONS

# The transformer's architecture flags and their training defaults (the original
# trainer's); applications fall back on them when a checkpoint does not say.
STN_ARCHITECTURE_DEFAULTS = {
    'transform': list(TRANSFORMS),
    'flow_size': 128,
    'stn_channel_multiplier': 0.5,
    'num_heads': 1,
}
RELEASED_TRUNK_WIDTH = 512  # channels of the low-resolution layers of every released transformer

_EPILOG = ('Flags added by the chosen generator, perceptual loss and dataset mode are listed under '
           '"options"; name other components (e.g. "--generator stylegan2 --help") to see theirs.')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: ...)' only where it informs: not for switches, required
    flags or help texts that already speak of their default."""

    def _get_help_string(self, action):
        text = action.help or ''
        if action.nargs == 0 or action.required or 'default' in text.lower():
            return text
        return super()._get_help_string(action)


def new_parser(description, add_help=True):
    """An empty ArgumentParser with the conventions every tier shares.

    Abbreviated flags are refused: the option set grows between the parsing
    passes, so an abbreviation could mean one flag early and another later.
    """
    return argparse.ArgumentParser(description=description, epilog=_EPILOG, add_help=add_help,
                                   allow_abbrev=False,
                                   formatter_class=_HelpFormatter)


def add_base_options(parser):
    """Flags shared by training and evaluation. Phase tiers set the defaults of
    --batch, --padding_mode and the spatial-transformer flags, which differ."""
    group = parser.add_argument_group('data and runtime')
    group.add_argument('--real_data_path', type=str, default=None,
                       help='real images in the layout --dataset_mode expects (an LMDB made by '
                            'prepare_data.py for lmdb); training uses them only for visuals and '
                            'evaluation')
    group.add_argument('--real_size', type=int, default=256, help='resolution of the real images')
    group.add_argument('--dataset_mode', type=DATASET_MODES.choice_type(), default='lmdb',
                       help='how real images are read (a registered dataset mode; a generator may '
                            'choose another default)')
    group.add_argument('--batch', type=int, default=None, help='batch size per process (per GPU)')
    add_runtime_flags(group)
    group.add_argument('--debug', action='store_true', help='small, quick run for debugging')

    # In evaluation these four stay unset unless given: the checkpoint's values are used.
    stn = parser.add_argument_group('spatial transformer (evaluation: unset = from the checkpoint)')
    stn.add_argument('--transform', type=str, nargs='+', choices=TRANSFORMS, default=None,
                     help='warps the spatial transformer predicts, applied in the given order')
    stn.add_argument('--flow_size', type=int, default=None,
                     help='resolution of the residual flow field (and of the STN input); a power '
                          'of two no larger than the image resolutions')
    stn.add_argument('--stn_channel_multiplier', type=float, default=None,
                     help="width multiplier of the STN's convolutions")
    stn.add_argument('--stn_max_channels', type=int, default=None,
                     help="cap on the STN's convolution widths (the original uses 512; small "
                          'values make a fast CPU model)')
    stn.add_argument('--num_heads', type=int, default=None,
                     help='number of clusters, each with its own warp head (1: unimodal GANgealing)')
    stn.add_argument('--padding_mode', type=str, default=None, choices=PADDING_MODES,
                     help='how the STN samples outside the image')
    return parser


def add_training_options(parser):
    """Flags of the training phase (the original trainer's, plus our additions)."""

    main = parser.add_argument_group('experiment')
    add_experiment_flags(main, ckpt_help='generator to align (a pretrained name such as cat, or a StyleGAN2 '
                                         'checkpoint path), or a GANgealing checkpoint to resume (ours bring '
                                         'their options); none: the built-in synthetic generator')
    main.add_argument('--load_G_only', action='store_true',
                      help='take only the generator (g_ema) from --ckpt and start the rest afresh')

    gen = parser.add_argument_group('generator')
    gen.add_argument('--generator', type=GENERATORS.choice_type(), default=None,
                     help="generator type (a registered generator); unset: 'synthetic' without "
                          "--ckpt, 'stylegan2' with it")
    gen.add_argument('--gen_size', type=int, default=256, help='resolution of the generated images')
    gen.add_argument('--dim_latent', type=int, default=512, help='width of W space')
    gen.add_argument('--n_mlp', type=int, default=8, help='layers of the mapping network')
    gen.add_argument('--gen_channel_multiplier', type=int, default=2,
                     help='channel multiplier of the generator')
    gen.add_argument('--gen_channel_max', type=int, default=512,
                     help='cap on the generator\'s widths (512: the standard layout; narrow models, '
                          'e.g. those of train_stylegan2.py --channel_max, need their value)')
    gen.add_argument('--num_fp16_res', type=int, default=0,
                     help='number of final generator resolutions run in half precision on CUDA '
                          '(4 for StyleGAN2-ADA checkpoints)')

    target = parser.add_argument_group('congealing target and objective')
    target.add_argument('--inject', type=int, default=5,
                        help='W+ entries [0, inject) take the learned target; later entries keep '
                             "the input's appearance (1 <= inject <= n_latent)")
    target.add_argument('--ndirs', type=int, default=1,
                        help='number of W-space PCA directions the target may move along')
    target.add_argument('--n_pca', type=int, default=1000000,
                        help='W samples for fitting the PCA (1000 with --debug)')
    target.add_argument('--kmeans_candidates', type=int, default=50000,
                        help='W samples k-means++ picks cluster centroids from when --num_heads > 1 '
                             '(200 with --debug)')
    target.add_argument('--anneal_psi', type=int, default=150000,
                        help='iterations over which psi goes from 1 to 0')
    target.add_argument('--anneal_fn', type=str, default='cosine', choices=ANNEAL_FUNCTIONS,
                        help='schedule of psi during annealing')
    target.add_argument('--loss_fn', type=PERCEPTUAL_LOSSES.choice_type(), default='vgg_ssl',
                        help='perceptual loss (a registered perceptual loss)')
    target.add_argument('--tv_weight', type=float, default=1000.0,
                        help='weight of the total-variation smoothness loss on the residual flow')
    target.add_argument('--flow_identity_weight', type=float, default=1.0,
                        help='weight of the loss pulling the residual flow towards zero')
    target.add_argument('--freeze_ll', action='store_true', help='keep the congealing target fixed')
    target.add_argument('--sample_from_full_res', action=argparse.BooleanOptionalAction, default=False,
                        help='warp the full-resolution generated images instead of downsampled ones '
                             '(--no-sample_from_full_res turns off a default that a component set)')
    target.add_argument('--flips', action='store_true',
                        help='also try each input mirrored and keep the smaller loss')
    target.add_argument('--change_weighting', type=float, default=0.0, metavar='A',
                        help='weigh the reconstruction loss towards pixels where a sample and its target '
                             'differ (where the pose change moved the object; a scene the target keeps '
                             'differs little): weights (1 - A) + A * difference / its mean, in [0, 1]; '
                             '0 (default) weighs every pixel alike')
    target.add_argument('--change_weighting_target', action='store_true',
                        help="with --change_weighting: keep the weights to where the target's object is (the "
                             'smaller of the sample-target difference and the difference between the target and '
                             'the sample under another random pose; one more generator pass per step)')

    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--stn_lr', type=float, default=0.001, help='learning rate of the STN')
    optim.add_argument('--ll_lr', type=float, default=0.01, help='learning rate of the congealing target')
    optim.add_argument('--period', type=float, default=37500.0,
                       help='first period (iterations) of the cosine schedule with warm restarts')
    optim.add_argument('--decay', type=float, default=0.9,
                       help='factor on the peak learning rate at each restart, in (0, 1]')
    optim.add_argument('--tm', type=int, default=2, help='each period is this many times longer than the last')

    speed = parser.add_argument_group('speed')
    speed.add_argument('--precision', type=str, default='auto', choices=PRECISIONS,
                       help='arithmetic of the training forward pass: fp32, or bf16 autocast of the generator, '
                            "transformer trunks and perceptual network (weights, gradients, optimiser and the "
                            'warps stay float32); auto picks per device what measured fastest with unchanged '
                            'PCK (bf16 on CPUs with native bfloat16, float32 elsewhere; see docs/benchmarks.md)')
    speed.add_argument('--compile', action='store_true',
                       help='run the training step\'s generator, transformer and perceptual loss through '
                            'torch.compile (the first iterations then take longer while they compile); '
                            'falls back to uncompiled modules with one warning when the compiler is missing '
                            'or fails. Off by default: on the development CPU steps ran 1.4-2x faster but compiling '
                            'costs minutes first (see docs/benchmarks.md)')

    vis = parser.add_argument_group('logging and visuals')
    add_interval_flags(vis, vis_help='iterations between visuals')
    vis.add_argument('--n_mean', type=int, default=8000, help='real images averaged for the mean-image visuals')
    vis.add_argument('--vis_batch_size', type=int, default=250, help='batch size when making visuals')
    vis.add_argument('--random_reals', action='store_true',
                     help='show a random set of real images instead of the first ones')
    vis.add_argument('--eval_iters', type=int, default=1,
                     help='times the similarity transformer is applied recursively in the final '
                          'PCK-Transfer evaluation (as --iters of the applications)')

    architecture = {key: list(value) if isinstance(value, list) else value
                    for key, value in STN_ARCHITECTURE_DEFAULTS.items()}
    parser.set_defaults(batch=5, padding_mode='reflection', stn_max_channels=RELEASED_TRUNK_WIDTH, **architecture)
    return parser


def add_eval_options(parser):
    """Flags of the evaluation phase (applications using a trained STN)."""
    group = parser.add_argument_group('evaluation')
    group.add_argument('--ckpt', type=str, required=True,
                       help='GANgealing checkpoint: a pretrained name (e.g. cat) or a path')
    group.add_argument('--iters', type=int, default=1,
                       help='times the similarity transformer is applied recursively')
    group.add_argument('--no_flip_inference', action='store_true',
                       help='do not try mirrored inputs (unimodal models only)')
    group.add_argument('--override', action='store_true',
                       help="use these flags instead of a pretrained model's recommended test-time "
                            'settings')
    group.add_argument('--output_resolution', type=int, default=None,
                       help='resolution of the aligned output images (unset: --real_size)')
    group.add_argument('--out', type=str, default='visuals', help='folder for the outputs')
    group.add_argument('--precision', type=str, default='auto', choices=PRECISIONS,
                       help="arithmetic of the transformer's trunk: fp32, or bf16 autocast (the warps "
                            'themselves stay float32); auto picks per device what measured fastest with '
                            'unchanged PCK (bf16 on CPUs with native bfloat16, float32 elsewhere; see docs/benchmarks.md)')
    # Unset spatial-transformer flags are read from the checkpoint.
    parser.set_defaults(batch=40, padding_mode='border', transform=None, flow_size=None,
                        stn_channel_multiplier=None, stn_max_channels=None, num_heads=None)
    return parser


def base_training_argparse(add_help=True):
    """The training parser before components add their flags: base + training tiers."""
    parser = new_parser('GANgealing training', add_help=add_help)
    add_base_options(parser)
    add_training_options(parser)
    return parser


def base_eval_argparse(add_help=True):
    """The evaluation parser: base + evaluation tiers. Applications add their own
    flags, then call ``parse_eval_options(parser)``."""
    parser = new_parser('Use a trained GANgealing spatial transformer', add_help=add_help)
    add_base_options(parser)
    add_eval_options(parser)
    return parser
