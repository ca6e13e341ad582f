"""The --synthetic_* flags, shared by the synthetic generator and the synthetic dataset mode."""
from utils.argparse_tools import has_option
from synthetic_world.deformation import DEFORMATION_FACTORS, MAX_DEFORMATION
from synthetic_world.factors import MAX_DISTRACTORS, MAX_MODES, NUM_FACTORS, WorldFactors


def add_world_options(parser):
    """Add the --synthetic_* world flags to ``parser`` (once; later calls do nothing)."""
    if has_option(parser, '--synthetic_rotation'):
        return parser
    d = WorldFactors()
    group = parser.add_argument_group('synthetic world')
    group.add_argument('--synthetic_rotation', type=float, default=d.rotation,
                       help='largest |rotation| of synthetic faces in degrees (0 = upright)')
    group.add_argument('--synthetic_scale', type=float, nargs=2, default=list(d.scale), metavar=('MIN', 'MAX'),
                       help='size range of synthetic faces as a fraction of the canvas')
    group.add_argument('--synthetic_translation', type=float, default=d.translation,
                       help='largest shift of synthetic faces per axis, as a fraction of the canvas')
    group.add_argument('--synthetic_no_mirror', action='store_true',
                       help='never mirror synthetic faces (rendered or generated)')
    group.add_argument('--synthetic_shape', type=float, default=d.shape,
                       help='largest relative change of face part sizes and positions (0 = rigid)')
    group.add_argument('--synthetic_no_appearance', action='store_true',
                       help='give every synthetic face the canonical colours and texture')
    group.add_argument('--synthetic_no_background', action='store_true',
                       help='draw synthetic faces on a flat background (no gradient, noise or distractors)')
    group.add_argument('--synthetic_distractors', type=int, default=d.distractors,
                       help=f'number of distractor shapes in synthetic backgrounds (0-{MAX_DISTRACTORS})')
    group.add_argument('--synthetic_modes', type=int, default=d.modes,
                       help=f'number of visually distinct head types (modes) of synthetic faces (1-{MAX_MODES}): '
                            'cats, droopy-eared and sideways-eared heads, in equal shares')
    group.add_argument('--synthetic_deformation', type=float, default=d.deformation,
                       help=f'largest coefficient (0-{MAX_DEFORMATION}) of a smooth per-face deformation that only '
                            f'a dense flow can undo (0 = off); the synthetic generator reads it from extra '
                            f'latent coordinates, so it needs --dim_latent >= {NUM_FACTORS + DEFORMATION_FACTORS}')
    return parser


def factors_from_options(opt):
    """WorldFactors from parsed --synthetic_* options (validated; UserError if out of range)."""
    d = WorldFactors()
    return WorldFactors(
        rotation=getattr(opt, 'synthetic_rotation', d.rotation),
        scale=tuple(getattr(opt, 'synthetic_scale', d.scale)),
        translation=getattr(opt, 'synthetic_translation', d.translation),
        mirror=not getattr(opt, 'synthetic_no_mirror', False),
        shape=getattr(opt, 'synthetic_shape', d.shape),
        appearance=not getattr(opt, 'synthetic_no_appearance', False),
        background=not getattr(opt, 'synthetic_no_background', False),
        distractors=getattr(opt, 'synthetic_distractors', d.distractors),
        modes=getattr(opt, 'synthetic_modes', d.modes),
        deformation=getattr(opt, 'synthetic_deformation', d.deformation),
    ).validate()
