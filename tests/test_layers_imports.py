"""The import rule of docs/ARCHITECTURE.md, checked on every module of the project.

Layers, lowest first: ground (``ops/``, ``utils/``, ``synthetic_world/``),
components (``models/``, ``datasets/``), assembly (``options/``, ``training/``,
``metrics/``, the applications' shared modules) and entry points (the top-level scripts and the
runnable ``applications/*.py``). A module imports only from its own layer or
below, ``models/`` and ``datasets/`` never import each other, and nothing but
the tests imports an entry point. Imports inside functions count too.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('ops', 'utils', 'synthetic_world', 'models', 'datasets', 'options', 'training', 'metrics',
            'applications')
ASSEMBLY_PACKAGES = ('options', 'training', 'metrics')
GROUND, COMPONENTS, ASSEMBLY, ENTRY = range(4)
LAYER_NAMES = ('ground', 'components', 'assembly', 'entry points')


def module_name(path):
    relative = os.path.relpath(path, ROOT)[:-len('.py')].split(os.sep)
    if relative[-1] == '__init__':
        relative = relative[:-1]
    return '.'.join(relative)


def is_entry_point(path):
    with open(path, encoding='utf-8') as f:
        return "if __name__ == '__main__':" in f.read()


def project_modules():
    """{module name: path} of every module outside tests/ and benchmarks/."""
    modules = {}
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if name.endswith('.py') and name != 'setup.py':
            modules[module_name(path)] = path
    for package in PACKAGES:
        for folder, subfolders, files in os.walk(os.path.join(ROOT, package)):
            subfolders[:] = [s for s in subfolders if not s.startswith(('.', '__'))]
            for file in files:
                if file.endswith('.py'):
                    path = os.path.join(folder, file)
                    modules[module_name(path)] = path
    return modules


def layer_of(module, path):
    top = module.split('.')[0]
    if '.' not in module and top not in PACKAGES:
        return ENTRY  # train.py, prepare_data.py, ...
    if top == 'applications':
        return ENTRY if is_entry_point(path) else ASSEMBLY
    if top in ASSEMBLY_PACKAGES:
        return ASSEMBLY
    if top in ('models', 'datasets'):
        return COMPONENTS
    return GROUND


def imported_modules(path, modules):
    """Project modules imported anywhere in the file at ``path`` (longest known prefix)."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from package import module" imports package.module when that is a module.
            names = [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            parts = name.split('.')
            while parts and '.'.join(parts) not in modules:
                parts.pop()
            if parts:
                found.add('.'.join(parts))
    return found


def violations(modules=None):
    """(problems, {module: layer}) for ``modules`` ({name: path}; default: the project's)."""
    modules = modules or project_modules()
    layers = {module: layer_of(module, path) for module, path in modules.items()}
    problems = []
    for module, path in sorted(modules.items()):
        for target in sorted(imported_modules(path, modules)):
            if target == module:
                continue
            source_layer, target_layer = layers[module], layers[target]
            source_top, target_top = module.split('.')[0], target.split('.')[0]
            if target_layer == ENTRY:
                problems.append(f'{module} imports the entry point {target}')
            elif target_layer > source_layer:
                problems.append(f'{module} ({LAYER_NAMES[source_layer]}) imports {target} '
                                f'({LAYER_NAMES[target_layer]})')
            elif {source_top, target_top} == {'models', 'datasets'}:
                problems.append(f'{module} imports {target}: models/ and datasets/ never import each other')
    return problems, layers


def test_imports_run_downwards_only():
    problems, _ = violations()
    assert not problems, 'imports running up or sideways:\n' + '\n'.join(problems)


def test_every_layer_is_populated():
    # The walk finds the project (a moved tree would make the test above vacuous).
    _, layers = violations()
    counts = [sum(1 for layer in layers.values() if layer == i) for i in range(4)]
    assert all(count > 0 for count in counts), dict(zip(LAYER_NAMES, counts))
    assert layers['train'] == ENTRY and layers['utils.errors'] == GROUND
    assert layers['models.stylegan2'] == COMPONENTS and layers['training.step'] == ASSEMBLY
    assert layers['options'] == ASSEMBLY and layers['metrics.pck_transfer'] == ASSEMBLY
    assert layers['synthetic_world.drawing'] == GROUND


@pytest.mark.parametrize('source, expected', [
    ('import train\n', 'utils.probe imports the entry point train'),
    ('def f():\n    from models.stylegan2 import Generator\n',
     'utils.probe (ground) imports models.stylegan2 (components)'),
    ('from training import step\n', 'utils.probe (ground) imports training.step (assembly)'),
    ('from options import parse_training_options\n', 'utils.probe (ground) imports options (assembly)'),
])
def test_the_checker_catches_an_upward_import(tmp_path, source, expected):
    modules = project_modules()
    modules['utils.probe'] = str(tmp_path / 'probe.py')
    (tmp_path / 'probe.py').write_text(source)
    problems, _ = violations(modules)
    assert expected in problems


def test_models_and_datasets_stay_apart(tmp_path):
    modules = project_modules()
    modules['models.probe'] = str(tmp_path / 'probe.py')
    (tmp_path / 'probe.py').write_text('from datasets.lmdb_dataset import MultiResolutionDataset\n')
    problems, _ = violations(modules)
    assert 'models.probe imports datasets.lmdb_dataset: models/ and datasets/ never import each other' in problems
