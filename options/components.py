"""Components chosen by name on the command line, and the passes that let them add flags.

A selector option names a registered component; the component class may have
static ``modify_commandline_options(parser, is_train)`` (add flags, change
other defaults; returns the parser), ``n_latent(opt)`` (generators),
``validate(opt, parser)`` (extra checks; calls ``parser.error``) and
``ignored_options(opt)`` ({dest: reason} of options it does not read: given on
the command line, they are refused rather than silently ignored).
"""
from datasets.modes import DATASET_MODES
from models.generators import GENERATORS
from models.perceptual import PERCEPTUAL_LOSSES
from utils.argparse_tools import find_action, preliminary_values

# selector option -> the registry of its components
SELECTORS = {
    'generator': GENERATORS,
    'loss_fn': PERCEPTUAL_LOSSES,
    'dataset_mode': DATASET_MODES,
}
# The order components modify the parser in: each may change the defaults of the
# selectors after it (the synthetic generator picks its loss and dataset mode).
TRAINING_COMPONENTS = ('generator', 'loss_fn', 'dataset_mode')
EVAL_COMPONENTS = ('dataset_mode',)

GENERATOR_WITHOUT_CKPT = 'synthetic'
GENERATOR_WITH_CKPT = 'stylegan2'


def registry_for(selector):
    """The registry behind a selector option ('generator', 'loss_fn', 'dataset_mode')."""
    return SELECTORS[selector]


def resolve_generator_name(generator, ckpt):
    """The generator to use: ``generator`` when given, else 'synthetic' without a
    checkpoint and 'stylegan2' with one."""
    if generator is not None:
        return generator
    return GENERATOR_WITH_CKPT if ckpt else GENERATOR_WITHOUT_CKPT


def _lookup(parser, selector, name):
    registry = registry_for(selector)
    if name not in registry:
        action = find_action(parser, selector)
        flag = action.option_strings[0] if action else f'--{selector}'
        parser.error(f"argument {flag}: unknown {registry.kind} '{name}' "
                     f"(choose from {', '.join(registry.names()) or 'none registered'})")
    return registry.get(name)


def apply_saved_defaults(parser, saved):
    """Make the values in ``saved`` ({dest: value}) the parser's defaults, for
    the dests the parser has (options of components not chosen are skipped)."""
    if saved:
        parser.set_defaults(**{dest: value for dest, value in saved.items()
                               if find_action(parser, dest) is not None})
    return parser


def apply_component_options(parser, argv, selectors, is_train, saved=None):
    """Let each chosen component add its flags, in order (the preliminary passes).

    For every selector in ``selectors``, ``argv`` is parsed again with the
    parser's current defaults (which components applied before may have
    changed) to learn the chosen name; that component's
    ``modify_commandline_options(parser, is_train)`` then runs. An unknown
    name is an argparse error (exit 2) listing the registered names.

    ``saved`` ({dest: value}, a resumed run's options) replaces the defaults
    before the passes and again after every component, so the resumed run's
    components and their settings win over the components' own defaults;
    what the user typed wins over both.

    Returns:
        (parser, {selector: (name, component class)}) for the selectors the
        parser has.
    """
    chosen = {}
    apply_saved_defaults(parser, saved)
    for selector in selectors:
        if find_action(parser, selector) is None:
            continue
        values = preliminary_values(parser, argv, [selector, 'ckpt'])
        name = values[selector]
        if selector == 'generator':
            # Record the rule's answer as the default, so help and opt.txt show it.
            if not (saved and 'generator' in saved):
                parser.set_defaults(generator=resolve_generator_name(None, values['ckpt']))
            name = resolve_generator_name(name, values['ckpt'])
        component = _lookup(parser, selector, name)
        modify = getattr(component, 'modify_commandline_options', None)
        if modify is not None:
            parser = modify(parser, is_train) or parser
            apply_saved_defaults(parser, saved)
        chosen[selector] = (name, component)
    return parser, chosen


def list_registered_names(parser, chosen):
    """Append each selector's registered names to its help text (for --help)."""
    for selector in chosen:
        action = find_action(parser, selector)
        registry = registry_for(selector)
        if action is not None and 'Registered:' not in (action.help or ''):
            action.help = f"{action.help}. Registered: {', '.join(registry.names())}"
    return parser


def check_choices_unchanged(opt, chosen):
    """Guard: the final parse must select the components whose flags were added."""
    for selector, (name, _) in chosen.items():
        if getattr(opt, selector) != name:
            raise RuntimeError(f'--{selector} changed from {name!r} to {getattr(opt, selector)!r} '
                               f'after its component was applied: a component set the default of '
                               f'a selector that comes before it')


def generator_n_latent(chosen, opt):
    """W+ entries of the chosen generator from its static ``n_latent(opt)``; None
    when there is no generator or it does not say."""
    if 'generator' not in chosen:
        return None
    n_latent = getattr(chosen['generator'][1], 'n_latent', None)
    return None if n_latent is None else int(n_latent(opt))


def component_ignored_options(opt, chosen):
    """{dest: reason} of the options the chosen components do not read, from
    each component's optional static ``ignored_options(opt)``."""
    ignored = {}
    for _, component in chosen.values():
        query = getattr(component, 'ignored_options', None)
        if query is not None:
            ignored.update(query(opt))
    return ignored


def run_component_validators(opt, parser, chosen):
    """Call each chosen component's optional static ``validate(opt, parser)``."""
    for _, component in chosen.values():
        validate = getattr(component, 'validate', None)
        if validate is not None:
            validate(opt, parser)
