"""``torch.compile`` of a module with a clean fallback: ``--compile``.

``compiled(module, name)`` returns a view of ``module`` whose calls run a
``torch.compile``-d forward. The view shares the module's parameters, buffers
and training mode, and reads its other attributes (``style_dim``, ...) through
to it, so the caller keeps the plain module for checkpoints, the EMA copy and
visuals (whose changing batch sizes would only cause recompilations) and hands
the view to the fixed-shape training step.

When the compiler is unusable (a torch without ``torch.compile``, no C++
compiler for the CPU backend, a model the compiler cannot trace) the view
prints one ``warning:`` line and runs the module eagerly from then on. A call
that fails compiled is re-run eagerly: if it fails there too, that error (the
model's own, not the compiler's) is raised as it would be without the view.
"""
import sys

import torch
from torch import nn


def _first_line(error):
    text = str(error).strip().splitlines()
    return f'{type(error).__name__}: {text[0]}' if text else type(error).__name__


def _warn(name, reason):
    print(f'warning: --compile: cannot compile the {name} ({reason}); it runs uncompiled', file=sys.stderr,
          flush=True)


class CompiledView(nn.Module):
    """Calls ``module`` through ``torch.compile``, falling back to eager once the compiler fails.

    ``module`` is registered as the only child (``view.module``): ``parameters()``,
    ``train()``/``eval()`` and ``to()`` act on the module itself. Attributes the view
    lacks are looked up on the module.
    """

    def __init__(self, module, name, **compile_kwargs):
        super().__init__()
        self.module = module
        self.name = name
        self.failed = False
        try:
            compiled = torch.compile(module, **compile_kwargs)
        except Exception as error:  # e.g. an unsupported Python version, an unknown backend
            compiled = None
            self._give_up(_first_line(error))
        # Kept outside nn.Module's registries: the compiled wrapper holds the same module again.
        object.__setattr__(self, '_compiled', compiled)

    def _give_up(self, reason):
        self.failed = True
        _warn(self.name, reason)

    def forward(self, *args, **kwargs):
        if self.failed:
            return self.module(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:
            # The eager run tells the compiler's failure from the model's own error (re-raised).
            result = self.module(*args, **kwargs)
            self._give_up(_first_line(error))
            return result

    def __getattr__(self, attr):
        try:
            return super().__getattr__(attr)
        except AttributeError:
            return getattr(super().__getattr__('module'), attr)


def compiled(module, name, enabled=True, **compile_kwargs):
    """``module`` run through ``torch.compile`` (a ``CompiledView``), or ``module`` itself.

    Args:
        module: any nn.Module; it is not modified.
        name: what the one-line fallback warning calls it ('generator', ...).
        enabled: False returns ``module`` unchanged (``--compile`` off).
        compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ``backend``...).
    """
    if not enabled:
        return module
    if not hasattr(torch, 'compile'):
        _warn(name, f'torch {torch.__version__} has no torch.compile')
        return module
    return CompiledView(module, name, **compile_kwargs)
