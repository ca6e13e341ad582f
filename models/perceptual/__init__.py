"""Perceptual losses, selected with ``--loss_fn NAME``.

Each module here registers one component class with
``@PERCEPTUAL_LOSSES.register('name')``; the class has a static
``modify_commandline_options(parser, is_train)`` and a static ``build(opt)``
returning a frozen module ``loss(a, b) -> (N,)`` for images (N, 3, H, W) in [-1, 1].
"""
from utils.registry import Registry

PERCEPTUAL_LOSSES = Registry('perceptual loss', __name__)
