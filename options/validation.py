"""Checks that turn impossible option combinations into one clear argparse error.

Each ``*_problems`` function returns a list of readable sentences; the
``validate_*`` functions report them all at once through ``parser.error``
(usage, the message, exit status 2, no traceback).
"""
import math
import os

from models.spatial_transformers.transformer import FLOW_DOWNSAMPLE, STNConfigError, validate_stn_args
from utils.argparse_tools import flag_name
from options.components import component_ignored_options, generator_n_latent, run_component_validators

MIN_IMAGE_SIZE = 8
WEIGHTS_NEEDING_FLOW = ('tv_weight', 'flow_identity_weight')
DEBUG_N_MEAN = 200  # images averaged into the congealed means of a --debug run, as the original's


def is_power_of_two(value):
    """True for 1, 2, 4, 8, ... (integers only)."""
    return isinstance(value, int) and value > 0 and value & (value - 1) == 0


class _Checker:
    """Collects problems about ``opt``, naming options the way the user types them."""

    def __init__(self, opt, parser):
        self.opt, self.parser, self.problems = opt, parser, []

    def flag(self, dest):
        return flag_name(self.parser, dest)

    def has(self, dest):
        return getattr(self.opt, dest, None) is not None

    def fail(self, message):
        self.problems.append(message)

    def at_least(self, dest, minimum):
        if self.has(dest) and getattr(self.opt, dest) < minimum:
            self.fail(f'{self.flag(dest)} must be at least {minimum} (got {getattr(self.opt, dest)})')

    def positive(self, dest):
        if self.has(dest) and not getattr(self.opt, dest) > 0:
            self.fail(f'{self.flag(dest)} must be greater than 0 (got {getattr(self.opt, dest)})')

    def image_size(self, dest):
        value = getattr(self.opt, dest, None)
        if value is not None and not (is_power_of_two(value) and value >= MIN_IMAGE_SIZE):
            self.fail(f'{self.flag(dest)} must be a power of two of at least {MIN_IMAGE_SIZE} (got {value})')

    def finite_numbers(self):
        for dest, value in sorted(vars(self.opt).items()):
            if isinstance(value, float) and not math.isfinite(value):
                self.fail(f'{self.flag(dest)} must be a finite number (got {value})')

    def flow_size(self, size_dests):
        """The transformer's own rules for --flow_size against each input size in ``size_dests``
        (--real_size, and in training --gen_size), in the words of the flags."""
        value = getattr(self.opt, 'flow_size', None)
        if value is None:
            return
        transform = 'flow' if 'flow' in (getattr(self.opt, 'transform', None) or ()) else 'similarity'
        for dest in size_dests:
            size = getattr(self.opt, dest, None)
            if size is None or not is_power_of_two(size):
                continue  # reported by image_size
            try:
                if dest == 'real_size':  # the transformer's input: all of its rules
                    validate_stn_args(transform, value, size, 1, FLOW_DOWNSAMPLE, 1.0)
                elif is_power_of_two(value) and value > size:  # generator output, resized to flow_size
                    raise STNConfigError('{flow_size} must not exceed {supersize}', flow_size=value, supersize=size)
            except STNConfigError as e:
                self.fail(e.render(lambda argument: self.flag(dest if argument == 'supersize' else argument)))
                return

    def transform_list(self):
        transform = getattr(self.opt, 'transform', None)
        # Similarity stages may repeat (each refines the previous one's output); one flow stage, last.
        if transform is not None and 'flow' in transform and transform.index('flow') != len(transform) - 1:
            self.fail(f'{self.flag("transform")} must have at most one flow stage, and last '
                      f'({" ".join(transform)}); e.g. similarity similarity flow')


def _experiment_name_problem(name):
    if not name or not name.strip():
        return 'must not be empty'
    if os.path.isabs(name) or '..' in name.replace('\\', '/').split('/'):
        return 'must be a name inside --results (no absolute path, no "..")'
    return None


def ignored_options(opt, chosen):
    """{dest: reason} of the training options this configuration does not read."""
    ignored = component_ignored_options(opt, chosen)
    if opt.num_heads == 1:
        ignored['kmeans_candidates'] = 'it picks cluster centroids and --num_heads is 1; drop it or raise --num_heads'
    if opt.freeze_ll:
        ignored['ll_lr'] = 'the target is fixed by --freeze_ll; drop one of the two'
    return ignored


def training_problems(opt, parser, explicit, chosen):
    """Problems with training options ``opt`` (after the final parse).

    An option the user gave that the configuration would not read is a
    problem (see ``ignored_options``): input is used or refused.

    Args:
        explicit: dests the user gave on the command line.
        chosen: {selector: (name, component)} from apply_component_options.
    Returns:
        (problems, notes): readable sentences, and {dest: note} for options
        this function adjusted (it sets flow-only loss weights to 0 when the
        transform has no flow and the user left them at their defaults).
    """
    c = _Checker(opt, parser)
    notes = {}
    c.finite_numbers()
    problem = _experiment_name_problem(opt.exp_name)
    if problem:
        c.fail(f'--exp-name {problem} (got {opt.exp_name!r})')
    for dest in ('batch', 'iter', 'num_heads', 'ndirs', 'dim_latent', 'n_mlp', 'gen_channel_multiplier', 'gen_channel_max',
                 'tm', 'vis_every', 'ckpt_every', 'log_every', 'n_mean', 'n_sample', 'vis_batch_size',
                 'n_pca', 'kmeans_candidates', 'eval_iters'):
        c.at_least(dest, 1)
    for dest in ('num_fp16_res', 'num_workers', 'seed', 'anneal_psi', 'stn_lr', 'll_lr',
                 'tv_weight', 'flow_identity_weight'):
        c.at_least(dest, 0)
    c.at_least('period', 1)
    c.positive('stn_channel_multiplier')
    c.at_least('stn_max_channels', 1)
    if not 0 <= getattr(opt, 'change_weighting', 0.0) <= 1:
        c.fail(f'--change_weighting must be in [0, 1] (got {opt.change_weighting})')
    if getattr(opt, 'change_weighting_target', False) and not getattr(opt, 'change_weighting', 0.0) > 0:
        c.fail('--change_weighting_target shapes the --change_weighting weights: give --change_weighting A > 0 too')
    if not 0 < opt.decay <= 1:
        c.fail(f'--decay must be in (0, 1] (got {opt.decay})')
    c.image_size('real_size')
    c.image_size('gen_size')
    c.flow_size(('real_size', 'gen_size'))
    c.transform_list()
    if opt.ndirs > opt.dim_latent >= 1:
        c.fail(f'--ndirs ({opt.ndirs}) must not exceed --dim_latent ({opt.dim_latent})')
    if opt.ndirs >= 1 and opt.n_pca < opt.ndirs:
        c.fail(f'--n_pca ({opt.n_pca}) must be at least --ndirs ({opt.ndirs})')
    if opt.num_heads > 1 and opt.kmeans_candidates < opt.num_heads:
        c.fail(f'--kmeans_candidates ({opt.kmeans_candidates}) must be at least --num_heads ({opt.num_heads})')
    if opt.load_G_only and not opt.ckpt:
        c.fail('--load_G_only needs --ckpt (the checkpoint to take the generator from)')
    if is_power_of_two(opt.gen_size) and opt.gen_size >= MIN_IMAGE_SIZE:
        n_latent = generator_n_latent(chosen, opt)
        if n_latent is not None and not 1 <= opt.inject <= n_latent:
            c.fail(f'--inject must be in [1, {n_latent}] for generator {opt.generator} at --gen_size '
                   f'{opt.gen_size} (it has {n_latent} W+ entries; got {opt.inject})')
    for dest, reason in sorted(ignored_options(opt, chosen).items()):
        if dest in explicit:
            c.fail(f'{c.flag(dest)} was given but would not be used: {reason}')
    if 'flow' not in opt.transform:
        for dest in WEIGHTS_NEEDING_FLOW:
            value = getattr(opt, dest)
            if dest in explicit and value > 0:
                c.fail(f'{c.flag(dest)} {value} regularises the residual flow, but --transform '
                       f'{" ".join(opt.transform)} has none: add flow to --transform or drop {c.flag(dest)}')
            elif dest not in explicit and value != 0:
                setattr(opt, dest, 0.0)
                notes[dest] = 'set to 0: --transform has no flow'
    if opt.debug and 'n_mean' not in explicit and opt.n_mean > DEBUG_N_MEAN:
        opt.n_mean = DEBUG_N_MEAN  # a quick run, as the original's --debug
        notes['n_mean'] = f'set to {DEBUG_N_MEAN} by --debug'
    return c.problems, notes


def eval_problems(opt, parser, native_size=False):
    """Problems with evaluation options ``opt``; options an application removed are skipped.

    ``native_size``: the application also takes --real_size 0 (images read at
    the size they were stored at, as prepare_data.py --size 0 stores them).
    """
    c = _Checker(opt, parser)
    c.finite_numbers()
    for dest in ('batch', 'iters', 'num_heads', 'output_resolution'):
        c.at_least(dest, 1)
    for dest in ('num_workers', 'seed'):
        c.at_least(dest, 0)
    c.positive('stn_channel_multiplier')
    c.at_least('stn_max_channels', 1)
    if not (native_size and opt.real_size == 0):
        c.image_size('real_size')
        c.flow_size(('real_size',))
    c.transform_list()
    return c.problems


# Evaluation flags no application reads: given on the command line, they are refused.
EVAL_UNREAD = {
    'debug': 'the applications have no quick debugging mode',
    'stn_max_channels': "the transformer's width is read from the checkpoint",
}


def unread_problems(parser, explicit, unread):
    """Problems for the options the user gave that the program does not read.

    Args:
        explicit: dests given on the command line.
        unread: {dest: why it is not read}.
    """
    return [f'{flag_name(parser, dest)} is not used here ({why}); drop it'
            for dest, why in unread.items() if dest in explicit]


def local_rank_problem(opt, explicit):
    """--local_rank is what torch.distributed.launch passes; given otherwise it would be ignored."""
    if 'local_rank' not in explicit:
        return []
    launched = os.environ.get('LOCAL_RANK')
    if launched is None or launched.strip() != str(opt.local_rank):
        where = 'no launcher set LOCAL_RANK' if launched is None else f'the launcher set LOCAL_RANK={launched}'
        return [f'--local_rank {opt.local_rank} is set by torch.distributed.launch, and {where}; drop it '
                f'(torchrun chooses each process\'s GPU)']
    return []


def _report(parser, problems):
    if problems:
        parser.error('; '.join(problems))


def validate_training_options(opt, parser, explicit, chosen):
    """Check training options; one ``parser.error`` (exit 2) listing every problem.

    Then the chosen components' own ``validate(opt, parser)`` run. Returns the
    notes about adjusted options ({dest: text}).
    """
    problems, notes = training_problems(opt, parser, explicit, chosen)
    _report(parser, problems)
    run_component_validators(opt, parser, chosen)
    return notes


def validate_eval_options(opt, parser, chosen, explicit=(), unread=None, native_size=False):
    """Check evaluation options; one ``parser.error`` (exit 2) listing every problem.

    Args:
        explicit: dests the user gave on the command line.
        unread: {dest: reason} of the options this application does not read
            (besides EVAL_UNREAD); given, they are refused.
        native_size: --real_size 0 is allowed (see ``eval_problems``).
    """
    unread = {**EVAL_UNREAD, **(unread or {})}
    _report(parser, unread_problems(parser, explicit, unread) + local_rank_problem(opt, explicit)
            + eval_problems(opt, parser, native_size))
    run_component_validators(opt, parser, chosen)
