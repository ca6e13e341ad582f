"""The pretrained StyleGAN2 generator as the ``--generator stylegan2`` component."""
import math

from models.generators import GENERATORS
from models.stylegan2 import CHANNEL_MAX, Generator


@GENERATORS.register('stylegan2')
class StyleGAN2Component:
    """Builds ``models.stylegan2.Generator`` from the generator flags
    (--gen_size, --dim_latent, --n_mlp, --gen_channel_multiplier, --gen_channel_max,
    --num_fp16_res)."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """The StyleGAN2 flags are base options; nothing to add. Returns ``parser``."""
        return parser

    @staticmethod
    def n_latent(opt):
        """Number of W+ entries of a generator of resolution opt.gen_size: 2 log2(size) - 2."""
        return 2 * int(math.log2(opt.gen_size)) - 2

    @staticmethod
    def build(opt):
        """A randomly initialised Generator for ``opt``; load g_ema weights into it."""
        # Options saved before --gen_channel_max existed describe standard widths.
        channel_max = getattr(opt, 'gen_channel_max', CHANNEL_MAX)
        return Generator(opt.gen_size, opt.dim_latent, opt.n_mlp,
                         channel_multiplier=opt.gen_channel_multiplier,
                         num_fp16_res=opt.num_fp16_res, channel_max=channel_max)
