"""Name -> component registries.

A component (generator type, perceptual loss, dataset mode, ...) is a class
registered under a name with ``@REGISTRY.register('name')``.  It may expose a
static ``modify_commandline_options(parser, is_train)`` that adds its own flags
and changes other options' defaults (pix2pix/CycleGAN style).

Each registry knows the package its components live in and imports every
module of that package the first time it is asked for a name, so adding a
component means adding one module and nothing else.
"""
import importlib
import pkgutil


class Registry:
    """A mapping from names to component classes, filled by module import.

    Args:
        kind: what the components are, for messages ("generator", ...).
        package: dotted name of the package whose modules register them.
    """

    def __init__(self, kind, package):
        self.kind = kind
        self.package = package
        self._items = {}
        self._scanned = False

    def register(self, name):
        """Class decorator registering ``cls`` under ``name``."""
        def wrap(cls):
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = cls
            cls.registry_name = name
            return cls
        return wrap

    def _scan(self):
        if self._scanned:
            return
        self._scanned = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith('_'):
                importlib.import_module(f'{self.package}.{info.name}')

    def names(self):
        """Sorted list of the registered names."""
        self._scan()
        return sorted(self._items)

    def __contains__(self, name):
        self._scan()
        return name in self._items

    def get(self, name):
        """The component registered as ``name``; KeyError listing known names."""
        self._scan()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        return self._items[name]

    def choice_type(self):
        """An argparse ``type=`` that accepts registered names and rejects others
        with an error listing the known ones."""
        import argparse

        def check(value):
            if value not in self:
                raise argparse.ArgumentTypeError(
                    f"unknown {self.kind} '{value}' (choose from {', '.join(self.names())})")
            return value
        check.__name__ = self.kind
        return check
