"""Models: StyleGAN2 and synthetic generators, spatial transformers, target learner.

``from models import Generator, get_stn`` keeps the names users of the original
code know. Imports are resolved lazily so that importing one model does not pull
in the others.
"""
import importlib

_EXPORTS = {
    'Generator': 'models.stylegan2',
    'SyntheticGenerator': 'synthetic_world.generator',
    'get_stn': 'models.spatial_transformers',
    'DirectionInterpolator': 'models.latent_learner',
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute '{name}'")
