"""Generator components, selected with ``--generator NAME``.

Each module here registers one component class with
``@GENERATORS.register('name')``; the class has a static
``modify_commandline_options(parser, is_train)`` and a static ``build(opt)``
returning a generator module with the interface of ``models.Generator``.
"""
from utils.registry import Registry

GENERATORS = Registry('generator', __name__)
