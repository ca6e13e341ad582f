"""Dataset modes, selected with ``--dataset_mode NAME``.

Each module here registers one component class with
``@DATASET_MODES.register('name')``; the class has a static
``modify_commandline_options(parser, is_train)`` and static builders
(``build_images(opt, split)``, ``build_pck(opt)``) documented in
docs/ARCHITECTURE.md.
"""
from utils.registry import Registry

DATASET_MODES = Registry('dataset mode', __name__)
