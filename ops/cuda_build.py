"""Choosing between the native ops and our CUDA kernels, and building the kernels.

Backend choice: ``set_backend('auto'|'native'|'cuda')``, else the environment
variable ``GANGEALING_OPS`` (same values), else ``'auto'``.
- ``native``: always the PyTorch implementations.
- ``auto``: CUDA tensors use the kernels in ops/cuda/; if they cannot be built,
  ONE warning is issued and the native path is used from then on.
- ``cuda``: CUDA tensors must use the kernels; a failed build raises
  CudaBuildError with the tail of the build log.
CPU tensors always take the native path (the kernels only run on a GPU).

Build: nothing is compiled at import.  The first CUDA call compiles the
sources with ``torch.utils.cpp_extension.load`` (ninja) into
``$TORCH_EXTENSIONS_DIR/<name>`` (default: torch's extensions root), where
``<name>`` carries a hash of the sources, the flags, the torch/CUDA/Python
versions and the GPU architectures, so a changed source or a different GPU gets
its own directory and an unchanged one is loaded without recompiling.

Several processes (torchrun ranks) building at once: recent torch releases
hold an OS-level file lock (``<build dir>/lock``) around the ninja step inside
``load``; older ones used a lock *file* whose mere existence blocks, which a
rank killed mid-build leaves behind, hanging every later run.  We therefore
take our own ``fcntl`` lock around the whole ``load`` call: the kernel releases
it if its holder dies, and the ranks that waited find the build complete, so
ninja has nothing left to do and they only import the module.
"""
import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import threading
import warnings

import torch

from utils.errors import UserError
from utils.file_lock import file_lock

BACKENDS = ('auto', 'native', 'cuda')
# Floating-point types the compiled kernels are instantiated for; others take the native path.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ENV_VAR = 'GANGEALING_OPS'
SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cuda')
CUDA_SOURCES = ('upfirdn2d_kernel.cu', 'bias_act_kernel.cu')
CPP_SOURCES = ('fused_ops_bindings.cpp',)
HEADERS = ('fused_ops.h',)
EXTRA_CFLAGS = ('-O3',)
EXTRA_CUDA_CFLAGS = ('-O3',)
LOG_TAIL_LINES = 40


class CudaBuildError(UserError):
    """The CUDA kernels were required (backend 'cuda') but could not be built."""


class _State:
    """Process-wide backend override and build outcome (guarded by ``lock``)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.backend = None      # set_backend() override; None = read the environment
        self.extension = None    # the built module, once loaded
        self.failure = None      # log tail of a failed build; the build is not retried
        self.warned = False


_state = _State()


def _validated(name, where):
    if name not in BACKENDS:
        raise UserError(f'{where} must be one of {", ".join(BACKENDS)}, got {name!r}; '
                        f'use "native" to run without the CUDA kernels')
    return name


def set_backend(name):
    """Force the ops implementation: 'auto', 'native' or 'cuda' (overrides $GANGEALING_OPS)."""
    _state.backend = _validated(name, 'the ops backend')


def get_backend():
    """The ops implementation in force: 'auto', 'native' or 'cuda'."""
    if _state.backend is not None:
        return _state.backend
    return _validated(os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto', ENV_VAR)


def extension_for(tensor):
    """The compiled kernels to use for ``tensor``, or None for the native path.

    Builds the kernels on the first call with a CUDA tensor (see module doc).
    Raises CudaBuildError if the backend is 'cuda' and the build failed.
    """
    backend = get_backend()
    if backend == 'native' or not tensor.is_cuda:
        return None
    return load_extension(required=backend == 'cuda')


def load_extension(required):
    """Build (once per process) and return the kernel module.

    On failure: raise CudaBuildError if ``required``, else warn once and return None.
    """
    with _state.lock:
        if _state.extension is None and _state.failure is None:
            try:
                _state.extension = _build_extension()
            except Exception as error:  # any failure means: use the native path
                _state.failure = _log_tail(str(error) or repr(error))
        if _state.extension is not None:
            return _state.extension
        failure = _state.failure
        warn = not required and not _state.warned
        _state.warned = _state.warned or warn
    if required:
        raise CudaBuildError(
            f"the ops backend is 'cuda' ({ENV_VAR} or ops.set_backend) but the CUDA kernels "
            f'could not be built. '
            f'Install a CUDA toolkit matching torch (nvcc, headers; set CUDA_HOME) '
            f'or use {ENV_VAR}=native. Build log (tail):\n{failure}')
    if warn:
        warnings.warn(
            f'ops: could not build the CUDA kernels ({_headline(failure)}); using the native PyTorch '
            f'ops instead. Set {ENV_VAR}=cuda to see the build log, or {ENV_VAR}=native '
            f'to silence this warning.', RuntimeWarning, stacklevel=3)
    return None


def _log_tail(text, lines=LOG_TAIL_LINES):
    return '\n'.join(text.rstrip().splitlines()[-lines:])


def _headline(log):
    """The most telling line of a build log: the last one mentioning an error, else the last."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if 'error' in line.lower() or 'fatal' in line.lower()]
    return (errors or lines or ['unknown error'])[-1]


def pip_toolkit_home():
    """The CUDA compiler installed from the package registry into this Python
    (``nvidia-cuda-nvcc`` and friends, see docs/fused_ops.md): the folder
    ``nvidia/cu<major>`` holding ``bin/nvcc`` for the CUDA major version torch
    was built with, or None."""
    if torch.version.cuda is None:
        return None
    # The 'nvidia' namespace package comes with torch's CUDA wheels (its runtime libraries), not with this
    # project: looked up, never imported.
    spec = importlib.util.find_spec('nvidia')
    major = torch.version.cuda.split('.')[0]
    for root in (spec.submodule_search_locations or []) if spec else []:
        home = os.path.join(root, f'cu{major}')
        if os.path.isfile(os.path.join(home, 'bin', 'nvcc')):
            return home
    return None


def find_cuda_home():
    """The CUDA toolkit root holding include/cuda_runtime.h and bin/nvcc, or None.

    Looks at $CUDA_HOME, $CUDA_PATH, torch's own guess, /usr/local/cuda, the
    nvcc on PATH and the registry packages (``pip_toolkit_home``).  Torch's
    guess alone can miss, e.g. when nvcc is a wrapper script in a directory
    other than the toolkit's.
    """
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    try:
        from torch.utils import cpp_extension
        candidates.append(cpp_extension.CUDA_HOME)
    except Exception:
        pass
    candidates.append('/usr/local/cuda')
    nvcc = shutil.which('nvcc')
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append(pip_toolkit_home())
    for home in candidates:
        if home and all(os.path.isfile(os.path.join(home, *part))
                        for part in (('include', 'cuda_runtime.h'), ('bin', 'nvcc'))):
            return home
    return None


def source_paths():
    """Absolute paths of the sources that are compiled (bindings first)."""
    return [os.path.join(SOURCE_DIR, name) for name in CPP_SOURCES + CUDA_SOURCES]


def _architectures():
    """What the compiled code is specialised for: the arch list or the visible GPUs."""
    arch_list = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if arch_list:
        return arch_list
    if torch.cuda.is_available():
        capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ' '.join(f'{major}.{minor}' for major, minor in sorted(capabilities))
    return 'none'


def extension_name():
    """Module name for the current sources and build setup, e.g. 'gangealing_fused_ops_1a2b...'."""
    digest = hashlib.sha256()
    for name in CPP_SOURCES + CUDA_SOURCES + HEADERS:
        with open(os.path.join(SOURCE_DIR, name), 'rb') as f:
            digest.update(name.encode() + b'\0' + f.read() + b'\0')
    setup = [torch.__version__, str(torch.version.cuda), sys.version.split()[0],
             _architectures(), *EXTRA_CFLAGS, '|', *EXTRA_CUDA_CFLAGS]
    digest.update('\0'.join(setup).encode())
    return f'gangealing_fused_ops_{digest.hexdigest()[:16]}'


def extensions_root():
    """$TORCH_EXTENSIONS_DIR, else torch's default root with its per-Python/CUDA folder."""
    root = os.environ.get('TORCH_EXTENSIONS_DIR')
    if root:
        return root
    from torch.utils import cpp_extension
    python = f'py{sys.version_info.major}{sys.version_info.minor}'
    return os.path.join(cpp_extension.get_default_build_root(),
                        f'{python}_cu{str(torch.version.cuda).replace(".", "")}')


def _build_extension():
    """Compile (or reuse) and import the kernel module for the visible GPUs; raises on any failure."""
    if not torch.cuda.is_available():
        raise RuntimeError('no CUDA device is available')
    return build_extension()


def build_extension(architectures=None):
    """Compile (or reuse) and import the kernel module; raises on any failure.

    ``architectures``: a TORCH_CUDA_ARCH_LIST value (e.g. '8.0 9.0') to build
    for, without needing a GPU; default: $TORCH_CUDA_ARCH_LIST, else the
    visible GPUs.  Importing the module resolves every symbol (Python loads
    extensions with RTLD_NOW), so a build that imports is completely linked;
    no kernel is launched, and a machine without a GPU can load it.
    """
    from torch.utils import cpp_extension

    with _arch_list(architectures):
        if _architectures() == 'none':
            raise RuntimeError('no CUDA device is visible and no architectures were given '
                               '(set TORCH_CUDA_ARCH_LIST, e.g. "8.0")')
        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise RuntimeError('no CUDA toolkit found (include/cuda_runtime.h and bin/nvcc); set CUDA_HOME '
                               'or install the compiler packages (docs/fused_ops.md)')
        name = extension_name()
        build_directory = os.path.join(extensions_root(), name)
        os.makedirs(build_directory, exist_ok=True)
        include_paths = [SOURCE_DIR, os.path.join(cuda_home, 'include')]
        library_paths = [os.path.join(cuda_home, d) for d in ('lib64', 'lib')
                         if os.path.isdir(os.path.join(cuda_home, d))]
        with file_lock(os.path.join(build_directory, 'gangealing_build.lock')):
            library_paths.append(_runtime_link_folder(library_paths, build_directory))
            try:
                with _torch_cuda_home(cpp_extension, cuda_home):
                    return _load(cpp_extension, name, include_paths, library_paths, build_directory)
            except Exception as error:
                # Keep the whole log next to the build; messages only show its tail.
                log_path = os.path.join(build_directory, 'build_failure.log')
                with open(log_path, 'w') as log:
                    log.write(str(error) or repr(error))
                raise RuntimeError(f'{error}\n(full log: {log_path})') from error


@contextlib.contextmanager
def _arch_list(architectures):
    """$TORCH_CUDA_ARCH_LIST set to ``architectures`` for the body (unchanged when None)."""
    if architectures is None:
        yield
        return
    previous = os.environ.get('TORCH_CUDA_ARCH_LIST')
    os.environ['TORCH_CUDA_ARCH_LIST'] = architectures
    try:
        yield
    finally:
        if previous is None:
            del os.environ['TORCH_CUDA_ARCH_LIST']
        else:
            os.environ['TORCH_CUDA_ARCH_LIST'] = previous


@contextlib.contextmanager
def _torch_cuda_home(cpp_extension, cuda_home):
    """torch's build helpers read the toolkit from a constant set at their import (from $CUDA_HOME or
    the nvcc on PATH, which may be a wrapper elsewhere); point it at the toolkit we found."""
    previous = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = cuda_home
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = previous


def _runtime_link_folder(library_paths, build_directory):
    """A folder holding ``libcudart.so`` for the linker's ``-lcudart``.

    The registry's runtime package ships only the versioned ``libcudart.so.<major>``
    (the name the loader asks for); a link named ``libcudart.so`` to it goes into
    the build directory, never into the toolkit.
    """
    folder = os.path.join(build_directory, 'cudart_link')
    for path in library_paths:
        if os.path.exists(os.path.join(path, 'libcudart.so')):
            return path
    for path in library_paths:
        if not os.path.isdir(path):
            continue
        versioned = sorted(n for n in os.listdir(path) if n.startswith('libcudart.so.'))
        if versioned:
            os.makedirs(folder, exist_ok=True)
            link = os.path.join(folder, 'libcudart.so')
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.join(path, versioned[0]), link)
            return folder
    return folder  # nothing to link against: the linker's own error will say so


def _load(cpp_extension, name, include_paths, library_paths, build_directory):
    """torch's JIT build (ninja) of our sources into build_directory, then import."""
    return cpp_extension.load(
        name=name,
        sources=source_paths(),
        extra_cflags=list(EXTRA_CFLAGS),
        extra_cuda_cflags=list(EXTRA_CUDA_CFLAGS),
        extra_include_paths=include_paths,
        extra_ldflags=[f'-L{path}' for path in library_paths],
        build_directory=build_directory,
        verbose=False,
    )
