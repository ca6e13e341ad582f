"""What installing the project puts into an environment: exactly the dependencies its code imports,
and no generic top-level names."""
import ast
import os
import runpy
import sys

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Import name -> distribution name, where the two differ.
DISTRIBUTION = {'PIL': 'pillow', 'sklearn': 'scikit-learn'}
# Distributions the code needs without importing them by name: torch uses them.
USED_THROUGH_TORCH = {'ninja', 'tensorboard'}
# Extras whose modules the tests import (the dev extra must hold these too).
TEST_ONLY = {'pytest', 'httpx', 'selenium', 'setuptools'}


def setup_arguments(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    runpy.run_path(os.path.join(ROOT, 'setup.py'), run_name='__main__')
    return captured


def distribution_names(requirements):
    names = set()
    for requirement in requirements:
        for separator in '<>=!~[ ;':
            requirement = requirement.split(separator)[0]
        names.add(requirement.strip().lower())
    return names


def project_top_names():
    return {name[:-3] if name.endswith('.py') else name for name in os.listdir(ROOT)
            if not name.startswith('.') and (name.endswith('.py') or os.path.isdir(os.path.join(ROOT, name)))}


def third_party_imports(folders):
    """{distribution: {top-level module-or-folder that imports it}} for code under ``folders`` of the repo
    (names ending in .py are top-level scripts)."""
    local, found = project_top_names(), {}
    for folder in folders:
        path = os.path.join(ROOT, folder)
        files = [path] if folder.endswith('.py') else [
            os.path.join(d, f) for d, subs, fs in os.walk(path) for f in fs if f.endswith('.py')]
        for file in files:
            with open(file, encoding='utf-8') as f:
                tree = ast.parse(f.read(), filename=file)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split('.')[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(DISTRIBUTION.get(top, top).lower(), set()).add(folder)
    return found


def product_folders():
    return sorted(name for name in os.listdir(ROOT)
                  if not name.startswith('.') and name not in ('tests', 'benchmarks', 'setup.py')
                  and (name.endswith('.py') or os.path.isfile(os.path.join(ROOT, name, '__init__.py'))))


def test_no_top_level_modules_are_installed(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    assert not arguments.get('packages') and not arguments.get('py_modules')
    assert 'package_dir' not in arguments and 'packages' in arguments  # explicit, not auto-discovered


def test_dependencies_are_exactly_what_the_code_imports(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    runtime = distribution_names(arguments['install_requires'])
    extras = {name: distribution_names(requirements) for name, requirements in arguments['extras_require'].items()}
    declared = runtime | set().union(*extras.values())
    imported = third_party_imports(product_folders())
    assert {'torch', 'numpy'} <= set(imported)  # the walk finds the code
    undeclared = {name: sorted(where) for name, where in imported.items() if name not in declared}
    assert not undeclared, f'imported by the code but declared nowhere in setup.py: {undeclared}'
    unused = runtime - set(imported) - USED_THROUGH_TORCH
    assert not unused, f'install_requires lists what no module imports: {sorted(unused)}'
    for name, requirements in extras.items():
        if name != 'dev':
            unused = requirements - set(imported)
            assert not unused, f'extra [{name}] lists what no module imports: {sorted(unused)}'


def test_the_dev_extra_installs_what_the_tests_import(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    extras = {name: distribution_names(requirements) for name, requirements in arguments['extras_require'].items()}
    available = distribution_names(arguments['install_requires']) | extras['dev']
    imported = third_party_imports(['tests'])
    missing = sorted(set(imported) - available - {'setuptools'})
    assert not missing, f'the tests import what [dev] does not install: {missing}'
    # dev holds every optional extra, so the whole suite runs after `pip install -e .[dev]`.
    for name, requirements in extras.items():
        assert requirements <= extras['dev'], f'[dev] lacks the [{name}] extra: {sorted(requirements - extras["dev"])}'
    assert TEST_ONLY - {'setuptools'} <= extras['dev']
