"""The CUDA side of ops/: the sources compile and the extension links and
imports (where a CUDA compiler is installed: a system toolkit, or the registry
packages docs/fused_ops.md names), and on a GPU the kernels match the native
ops in values and gradients, for every dtype they are built for.

The compile and link checks take a minute or two of CPU each; deselect them
with ``-m "not cuda_compile"``.
"""
import itertools
import math
import os
import shutil
import subprocess
import sysconfig

import pytest
import torch

import ops
from ops import cuda_build
from ops.fused_act_native import fused_leaky_relu_native
from ops.upfirdn2d_native import upfirdn2d_native

# One architecture is enough to catch source errors; the real build targets the GPUs present.
COMPILE_CHECK_ARCH = '-gencode=arch=compute_80,code=sm_80'
COMPILE_TIMEOUT_S = 600
LINK_CHECK_ARCH = '8.0'  # a TORCH_CUDA_ARCH_LIST value

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


# ----------------------------------------------------------------------------- compile check

def _compile_commands(out_dir, nvcc):
    """nvcc / host-compiler commands producing one object file per source in out_dir."""
    from torch.utils import cpp_extension

    includes = [f'-I{cuda_build.SOURCE_DIR}']
    for path in cpp_extension.include_paths():
        includes += ['-isystem', path]
    defines = ['-DTORCH_EXTENSION_NAME=gangealing_compile_check', '-DTORCH_API_INCLUDE_EXTENSION_H',
               f'-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}']
    nvcc_flags = list(getattr(cpp_extension, 'COMMON_NVCC_FLAGS', ['--expt-relaxed-constexpr']))
    commands = []
    for name in cuda_build.CUDA_SOURCES:
        commands.append([nvcc, '-c', os.path.join(cuda_build.SOURCE_DIR, name),
                         '-o', os.path.join(out_dir, name + '.o'), '-std=c++20', COMPILE_CHECK_ARCH,
                         '--compiler-options', '-fPIC', *nvcc_flags, *cuda_build.EXTRA_CUDA_CFLAGS,
                         *includes, *defines])
    python_include = sysconfig.get_paths()['include']
    for name in cuda_build.CPP_SOURCES:
        commands.append([shutil.which(os.environ.get('CXX', 'c++')), '-c',
                         os.path.join(cuda_build.SOURCE_DIR, name), '-o', os.path.join(out_dir, name + '.o'),
                         '-std=c++20', '-fPIC', *cuda_build.EXTRA_CFLAGS, *includes,
                         '-isystem', python_include, *defines])
    return commands


def _require_toolkit():
    """The CUDA toolkit to build with (see cuda_build.find_cuda_home); skips when there is none,
    unless $GANGEALING_REQUIRE_CUDA_COMPILER is set (CI installs the compiler and sets it), where a
    missing compiler fails. A CPU-only torch build always skips: it has no CUDA headers to build with."""
    if torch.version.cuda is None:
        pytest.skip('torch is not a CUDA build (no c10/cuda headers)')
    missing = pytest.fail if os.environ.get('GANGEALING_REQUIRE_CUDA_COMPILER') else pytest.skip
    home = cuda_build.find_cuda_home()
    if home is None:
        missing('no CUDA toolkit (include/cuda_runtime.h and bin/nvcc); set CUDA_HOME or install the '
                'compiler packages (bash scripts/install_cuda_compiler.sh, docs/fused_ops.md)')
    if shutil.which(os.environ.get('CXX', 'c++')) is None:
        missing('no host C++ compiler')
    return home


@pytest.mark.cuda_compile
def test_cuda_sources_compile(tmp_path):
    home = _require_toolkit()
    commands = _compile_commands(str(tmp_path), os.path.join(home, 'bin', 'nvcc'))
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command in commands]
    for command, process in zip(commands, processes):
        output, _ = process.communicate(timeout=COMPILE_TIMEOUT_S)
        tail = '\n'.join(output.splitlines()[-30:])
        assert process.returncode == 0, f'{os.path.basename(command[2])} failed to compile:\n{tail}'
    objects = sorted(p.name for p in tmp_path.iterdir() if p.suffix == '.o')
    expected = sorted(name + '.o' for name in cuda_build.CPP_SOURCES + cuda_build.CUDA_SOURCES)
    assert objects == expected
    assert all((tmp_path / name).stat().st_size > 0 for name in objects)


@pytest.mark.cuda_compile
def test_cuda_extension_builds_links_and_imports(tmp_path, monkeypatch):
    """The whole extension through ops/cuda_build (ninja, nvcc, the linker), then imported: an
    undefined symbol or a binding that does not match its declaration fails here, on any machine
    with the compiler (no kernel is launched, so no GPU is needed)."""
    _require_toolkit()
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST', raising=False)
    module = cuda_build.build_extension(architectures=LINK_CHECK_ARCH)
    assert os.environ.get('TORCH_CUDA_ARCH_LIST') is None  # restored after the build
    library = os.path.realpath(module.__file__)
    assert library.startswith(os.path.realpath(tmp_path)) and library.endswith('.so')
    assert module.__name__.startswith('gangealing_fused_ops_')
    # What ops/ calls, with the argument names the bindings declare.
    signatures = {
        'upfirdn2d': ['x', 'kernel', 'up_x', 'up_y', 'down_x', 'down_y', 'pad_x0', 'pad_x1', 'pad_y0', 'pad_y1'],
        'bias_leaky_relu': ['x', 'bias', 'negative_slope', 'scale'],
        'leaky_relu_grad': ['grad', 'ref', 'negative_slope', 'scale'],
    }
    for name, arguments in signatures.items():
        doc = getattr(module, name).__doc__
        assert doc.startswith(f'{name}(') and all(f'{argument}:' in doc for argument in arguments), doc
    # A wrong call is refused by the bindings, before any kernel could run.
    with pytest.raises(TypeError):
        module.upfirdn2d(torch.zeros(1, 1, 2, 2))
    # A second build of unchanged sources only imports.
    assert cuda_build.build_extension(architectures=LINK_CHECK_ARCH).__file__ == module.__file__


def test_runtime_link_folder_names_the_versioned_runtime(tmp_path):
    """The registry's runtime package has only libcudart.so.<major>: the linker's -lcudart gets a link
    to it inside the build directory; a toolkit with libcudart.so is used as it is."""
    registry_lib = tmp_path / 'cu13' / 'lib'
    registry_lib.mkdir(parents=True)
    (registry_lib / 'libcudart.so.13').write_bytes(b'runtime')
    build = tmp_path / 'build'
    build.mkdir()
    folder = cuda_build._runtime_link_folder([str(tmp_path / 'missing'), str(registry_lib)], str(build))
    assert folder == str(build / 'cudart_link')
    assert (build / 'cudart_link' / 'libcudart.so').read_bytes() == b'runtime'
    # Again (a rebuild): the link is replaced, not an error.
    assert cuda_build._runtime_link_folder([str(registry_lib)], str(build)) == folder
    (registry_lib / 'libcudart.so').symlink_to('libcudart.so.13')
    assert cuda_build._runtime_link_folder([str(registry_lib)], str(build)) == str(registry_lib)


# ----------------------------------------------------------------------------- on a GPU

UPS = [1, 2, (2, 1), (1, 3)]
DOWNS = [1, 2, (1, 2)]
PADS = [(0, 0), (2, 1), (-1, 2), (1, -2, 0, 3)]
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
# Every dtype the kernels are built for.
KERNEL_DTYPES = list(cuda_build.KERNEL_DTYPES)


@pytest.fixture
def cuda_backend():
    """Force the CUDA kernels (a failed build fails the test) and return the module."""
    previous = cuda_build._state.backend
    ops.set_backend('cuda')
    try:
        yield cuda_build.load_extension(required=True)
    finally:
        cuda_build._state.backend = previous


@requires_gpu
def test_extension_cached_under_hashed_name(cuda_backend):
    directory = os.path.dirname(os.path.abspath(cuda_backend.__file__))
    assert os.path.basename(directory) == cuda_build.extension_name()
    assert os.path.dirname(directory) == os.path.abspath(cuda_build.extensions_root())


@requires_gpu
@pytest.mark.parametrize('dtype', KERNEL_DTYPES)
def test_cuda_upfirdn2d_matches_native(cuda_backend, dtype):
    generator = torch.Generator(device='cuda').manual_seed(0)
    x64 = torch.randn(2, 3, 9, 11, device='cuda', dtype=torch.float64, generator=generator)
    kernel = torch.randn(4, 3, device='cuda', dtype=torch.float64, generator=generator)
    tolerance = TOLERANCES[dtype]
    for up, down, pad in itertools.product(UPS, DOWNS, PADS):
        x = x64.to(dtype).requires_grad_()
        result = ops.upfirdn2d(x, kernel, up, down, pad)
        assert 'UpFirDn2dFunction' in result.grad_fn.name()
        reference_x = x.detach().double().requires_grad_()
        expected = upfirdn2d_native(reference_x, kernel, up, down, pad)
        assert result.dtype == dtype and result.shape == expected.shape
        scale = expected.abs().max().item()
        assert (result.double() - expected).abs().max().item() <= tolerance * scale, (up, down, pad)

        grad_out = torch.randn(expected.shape, device='cuda', dtype=torch.float64, generator=generator)
        grad, = torch.autograd.grad(result, x, grad_out.to(dtype))
        expected_grad, = torch.autograd.grad(expected, reference_x, grad_out)
        scale = expected_grad.abs().max().item()
        assert (grad.double() - expected_grad).abs().max().item() <= tolerance * scale, (up, down, pad)


@requires_gpu
def test_cuda_upfirdn2d_stylegan2_shapes_and_layouts(cuda_backend):
    kernel = torch.outer(torch.tensor([1., 3., 3., 1.]), torch.tensor([1., 3., 3., 1.])).cuda()
    kernel = kernel / kernel.sum()
    x = torch.randn(4, 32, 16, 16, device='cuda')
    for args in [dict(up=2, pad=(2, 1)), dict(down=2, pad=(1, 1)), dict(pad=(2, 1))]:
        k = kernel * 4 if 'up' in args else kernel
        expected = upfirdn2d_native(x, k, **args)
        assert torch.allclose(ops.upfirdn2d(x, k, **args), expected, atol=1e-5)
        channels_last = x.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(ops.upfirdn2d(channels_last, k, **args), expected, atol=1e-5)
    # A kernel on the CPU is moved to the input's device.
    assert torch.allclose(ops.upfirdn2d(x, kernel.cpu(), pad=(2, 1)), upfirdn2d_native(x, kernel, pad=(2, 1)),
                          atol=1e-5)


@requires_gpu
@pytest.mark.parametrize('shape', [(8, 16), (2, 8, 5, 7)])
@pytest.mark.parametrize('dtype', KERNEL_DTYPES)
def test_cuda_fused_leaky_relu_matches_native(cuda_backend, shape, dtype):
    generator = torch.Generator(device='cuda').manual_seed(1)
    x = torch.randn(shape, device='cuda', dtype=torch.float64, generator=generator)
    bias = torch.randn(shape[1], device='cuda', dtype=torch.float64, generator=generator)
    tolerance = TOLERANCES[dtype]
    for negative_slope, scale in [(0.2, math.sqrt(2)), (-0.5, 1.0)]:
        xd = x.to(dtype).requires_grad_()
        bd = bias.float().requires_grad_()  # a float32 parameter, as in mixed precision
        result = ops.fused_leaky_relu(xd, bd, negative_slope, scale)
        assert 'FusedLeakyReLUFunction' in result.grad_fn.name() and result.dtype == dtype
        xr = xd.detach().double().requires_grad_()
        br = bd.detach().to(dtype).double().requires_grad_()
        expected = fused_leaky_relu_native(xr, br, negative_slope, scale)
        assert torch.allclose(result.double(), expected, atol=tolerance * 4, rtol=tolerance)

        grad_out = torch.randn(shape, device='cuda', dtype=torch.float64, generator=generator)
        grad_x, grad_b = torch.autograd.grad(result, (xd, bd), grad_out.to(dtype))
        expected_x, expected_b = torch.autograd.grad(expected, (xr, br), grad_out)
        assert grad_b.dtype == torch.float32
        assert torch.allclose(grad_x.double(), expected_x, atol=tolerance * 4, rtol=tolerance)
        assert torch.allclose(grad_b.double(), expected_b, atol=tolerance * 4 * x.numel() ** 0.5,
                              rtol=tolerance)


@requires_gpu
def test_cuda_ops_gradcheck_and_double_backward(cuda_backend):
    generator = torch.Generator(device='cuda').manual_seed(2)
    x = torch.randn(1, 2, 5, 6, device='cuda', dtype=torch.float64, generator=generator, requires_grad=True)
    kernel = torch.randn(3, 4, device='cuda', dtype=torch.float64, generator=generator)
    bias = torch.randn(2, device='cuda', dtype=torch.float64, generator=generator, requires_grad=True)

    def resample(a):
        return ops.upfirdn2d(a, kernel, up=(2, 1), down=(1, 2), pad=(2, -1, 1, 2))

    assert 'UpFirDn2dFunction' in resample(x).grad_fn.name()
    assert torch.autograd.gradcheck(resample, (x,))
    assert torch.autograd.gradgradcheck(resample, (x,))
    assert 'FusedLeakyReLUFunction' in ops.fused_leaky_relu(x, bias).grad_fn.name()
    assert torch.autograd.gradcheck(ops.fused_leaky_relu, (x, bias))
    assert torch.autograd.gradgradcheck(ops.fused_leaky_relu, (x, bias))
