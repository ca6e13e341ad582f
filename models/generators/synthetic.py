"""The built-in synthetic world as the ``--generator synthetic`` component.

Chosen by default when no ``--ckpt`` is given. Besides its world flags
(``--synthetic_*``, shared with the synthetic dataset mode) it sets the
defaults of a CPU demo: ``python train.py --exp-name demo`` trains on 64 x 64
synthetic faces with a weight-free loss and reports PCK-Transfer on held-out
rendered faces. The values (documented in docs/synthetic_world.md) aim at
about ten minutes on two CPU cores; every one can be overridden on the
command line.
"""
from models.generators import GENERATORS
from synthetic_world.generator import COARSE_LAYERS, N_LATENT, SyntheticGenerator
from synthetic_world import NUM_FACTORS, add_world_options, factors_from_options
from synthetic_world.options import photo_flags_given
from utils.errors import UserError
from synthetic_world.deformation import DEFORMATION_FACTORS

DEMO_DEFAULTS = dict(
    dataset_mode='synthetic',
    loss_fn='laplacian',        # weight-free: nothing to download
    # Faces fill up to the whole canvas, so zooming out samples beyond it, where
    # reflection padding mirrors copies of the face into the frame; the loss
    # then held rotations back (see benchmarks/studies/diagnose_synthetic_alignment.py).
    padding_mode='border',
    gen_size=64, real_size=64,
    flow_size=32, stn_channel_multiplier=0.125, stn_max_channels=32,
    # A second similarity stage refines the first one's output: in a short run
    # it undoes far more of each pose than iterating one stage at test time.
    transform=['similarity', 'similarity', 'flow'],
    sample_from_full_res=True,  # warp the 64 x 64 samples, as the real images are
    dim_latent=NUM_FACTORS, n_mlp=1,
    inject=COARSE_LAYERS,       # W+ entries [0, 4) hold pose and shape
    batch=10, stn_lr=0.006,
    iter=2400, anneal_psi=600, period=1800,  # one cosine cycle after psi reaches 0
    vis_every=1000, ckpt_every=1000, log_every=25,
    eval_iters=1,               # the stages are trained to work once each
    n_mean=200, n_sample=16, vis_batch_size=50,
    n_pca=20000, kmeans_candidates=2000,
)


@GENERATORS.register('synthetic')
class SyntheticComponent:
    """Builds ``synthetic_world.generator.SyntheticGenerator`` from --gen_size,
    --dim_latent and the --synthetic_* world flags."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """Adds the world flags and sets the CPU-demo defaults (DEMO_DEFAULTS). Returns ``parser``."""
        add_world_options(parser)
        parser.set_defaults(**DEMO_DEFAULTS)
        return parser

    @staticmethod
    def n_latent(opt):
        """Number of W+ entries: always 8 (entries [0, 4) pose and shape, [4, 8) appearance)."""
        return N_LATENT

    @staticmethod
    def validate(opt, parser):
        """Rejects world flags out of range, photo-world flags without the synthetic dataset
        mode, and a W space too narrow for the world's factors (parser.error, exit 2)."""
        try:
            factors_from_options(opt)
        except UserError as e:
            parser.error(str(e))
        given = photo_flags_given(opt)
        if given and getattr(opt, 'dataset_mode', 'synthetic') != 'synthetic':
            parser.error(f'{", ".join(given)} describe(s) the photo world of --dataset_mode synthetic; with '
                         f'--dataset_mode {opt.dataset_mode} the real images are yours: drop them, or use '
                         f'--dataset_mode synthetic')
        if getattr(opt, 'dim_latent', NUM_FACTORS) < NUM_FACTORS:
            parser.error(f'--generator synthetic needs --dim_latent >= {NUM_FACTORS}, got {opt.dim_latent}')
        needed = NUM_FACTORS + DEFORMATION_FACTORS
        if getattr(opt, 'synthetic_deformation', 0) > 0 and getattr(opt, 'dim_latent', NUM_FACTORS) < needed:
            parser.error(f'--synthetic_deformation reads its coefficients from latent coordinates beyond the '
                         f'other factors: it needs --dim_latent >= {needed}, got {opt.dim_latent}')

    @staticmethod
    def ignored_options(opt):
        """The StyleGAN2 architecture flags (its mapping is fixed, its precision float32)."""
        reason = 'the synthetic generator has a fixed renderer (only --gen_size and --dim_latent shape it)'
        return {dest: reason for dest in ('n_mlp', 'gen_channel_multiplier', 'gen_channel_max', 'num_fp16_res')}

    @staticmethod
    def build(opt):
        """A SyntheticGenerator of resolution opt.gen_size (its fixed weights are
        the same in every run; loading a g_ema state dict restores them too)."""
        return SyntheticGenerator(opt.gen_size, opt.dim_latent, factors=factors_from_options(opt))
