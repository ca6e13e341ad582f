"""What installing the project puts into an environment: its dependencies, no generic top-level names."""
import os
import runpy

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_arguments(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    runpy.run_path(os.path.join(ROOT, 'setup.py'), run_name='__main__')
    return captured


def test_no_top_level_modules_are_installed(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    assert not arguments.get('packages') and not arguments.get('py_modules')
    assert 'package_dir' not in arguments and 'packages' in arguments  # explicit, not auto-discovered


def test_dependencies_cover_what_the_code_imports(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    required = {r.split('>')[0].split('=')[0].split('<')[0].strip().lower() for r in arguments['install_requires']}
    assert {'torch', 'torchvision', 'numpy', 'lmdb', 'pillow', 'tqdm', 'tensorboard', 'ninja'} <= required
    assert 'pytest' in arguments['extras_require']['dev']
