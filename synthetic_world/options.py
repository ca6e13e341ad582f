"""The --synthetic_* flags, shared by the synthetic generator and the synthetic dataset mode."""
from utils.argparse_tools import has_option
from utils.errors import UserError
from synthetic_world.photo import MAX_LIGHTING, MAX_OCCLUDERS
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
    group.add_argument('--synthetic_scene', action='store_true',
                       help='photo world: lay the background out in the camera\'s frame, independent of the '
                            'face\'s pose (wall gradient, floor, textures at three scales, shapes)')
    group.add_argument('--synthetic_occluders', type=int, default=None, metavar='N',
                       help=f'photo world: up to N (0-{MAX_OCCLUDERS}) bars, blobs or paws in front of the face; '
                            'keypoints they cover are invisible (default 0, or the --synthetic_world preset\'s)')
    group.add_argument('--synthetic_lighting', type=float, default=None, metavar='S',
                       help=f'photo world: strength S (0-{MAX_LIGHTING:g}) of per-image shading across the face, '
                            'brightness, contrast and colour cast (default 0, or the --synthetic_world preset\'s)')
    group.add_argument('--synthetic_world', type=str, default='default', metavar='PRESET',
                       help=f'world preset: {", ".join(WORLD_PRESETS)} (photo: '
                            + ', '.join(f'{k} {v}' for k, v in WORLD_PRESETS['photo'].items())
                            + '; explicit --synthetic_occluders / --synthetic_lighting override it)')
    return parser


# Presets of --synthetic_world: the photo factors each turns on (docs/synthetic_world.md).
WORLD_PRESETS = {
    'default': {},
    'photo': {'scene': True, 'occluders': 2, 'lighting': 0.5},
}
PHOTO_FLAGS = ('--synthetic_scene', '--synthetic_occluders', '--synthetic_lighting', '--synthetic_world')


def photo_flags_given(opt):
    """The photo-world flags set away from their defaults in ``opt`` (a list of flag names)."""
    given = []
    if getattr(opt, 'synthetic_scene', False):
        given.append('--synthetic_scene')
    for dest in ('synthetic_occluders', 'synthetic_lighting'):
        if getattr(opt, dest, None) is not None:
            given.append('--' + dest)
    if getattr(opt, 'synthetic_world', 'default') != 'default':
        given.append('--synthetic_world')
    return given


def _photo_factors(opt):
    # (scene, occluders, lighting) from the preset, overridden by explicit flags.
    name = getattr(opt, 'synthetic_world', 'default')
    if name not in WORLD_PRESETS:
        raise UserError(f'synthetic world: unknown --synthetic_world preset {name!r}; '
                        f'choose one of {", ".join(WORLD_PRESETS)}')
    preset = WORLD_PRESETS[name]
    scene = bool(getattr(opt, 'synthetic_scene', False) or preset.get('scene', False))
    occluders = getattr(opt, 'synthetic_occluders', None)
    lighting = getattr(opt, 'synthetic_lighting', None)
    return (scene, preset.get('occluders', 0) if occluders is None else occluders,
            preset.get('lighting', 0.0) if lighting is None else lighting)


def factors_from_options(opt):
    """WorldFactors from parsed --synthetic_* options (validated; UserError if out of range)."""
    d = WorldFactors()
    scene, occluders, lighting = _photo_factors(opt)
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
        scene=scene, occluders=occluders, lighting=lighting,
    ).validate()
