"""CPU tests of ops/: the native ops against scipy and hand-written formulas,
their gradients, the autograd rules written for the CUDA kernels (run here with
the native code standing in for the kernels), and the backend choice."""
import itertools
import math
import types
import warnings

import numpy as np
import pytest
import torch
from scipy import signal

import ops
from ops import cuda_build
from ops.fused_act import FusedLeakyReLU, FusedLeakyReLUFunction, fused_leaky_relu
from ops.fused_act_native import fused_leaky_relu_native
from ops.upfirdn2d import UpFirDn2dFunction, upfirdn2d
from ops.upfirdn2d_native import normalize_factors, upfirdn2d_native
from utils.errors import UserError
from utils.file_lock import file_lock

UPS = [1, 2, 3, (2, 1), (1, 3)]
DOWNS = [1, 2, (2, 1), (1, 3)]
PADS = [(0, 0), (2, 1), (1, 2), (-1, 2), (3, -1), (1, -2, 0, 3), (-2, 0, 2, 1)]


# ----------------------------------------------------------------------------- references

def scipy_upfirdn_axis(x, taps, up, down, pad0, pad1, axis):
    """upfirdn along one axis, with scipy.signal.upfirdn doing the upsampling and convolution.

    scipy returns the full convolution ``full`` of the zero-inserted signal.
    Padding by pad0 in front shifts it, and the 'valid' part starts K - 1 in,
    so our sample o is full[o * down + K - 1 - pad0] (zero beyond ``full``).
    """
    full = signal.upfirdn(taps, x, up=up, down=1, axis=axis)
    n, k = x.shape[axis], len(taps)
    length = (n * up + pad0 + pad1 - k) // down + 1
    index = np.arange(length) * down + k - 1 - pad0
    inside = (index >= 0) & (index < full.shape[axis])
    taken = np.take(full, np.clip(index, 0, full.shape[axis] - 1), axis=axis)
    mask_shape = [1] * x.ndim
    mask_shape[axis] = length
    return taken * inside.reshape(mask_shape)


def scipy_upfirdn2d_separable(x, taps_y, taps_x, up, down, pad):
    """upfirdn2d of x (N, C, H, W) with kernel outer(taps_y, taps_x), axis by axis."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = normalize_factors(up, down, pad)
    out = scipy_upfirdn_axis(x, taps_x, ux, dx, px0, px1, axis=3)
    return scipy_upfirdn_axis(out, taps_y, uy, dy, py0, py1, axis=2)


def direct_upfirdn2d(x, kernel, up, down, pad):
    """upfirdn2d straight from its definition, for any (non-separable) kernel."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = normalize_factors(up, down, pad)
    n, c, h, w = x.shape
    upsampled = np.zeros((n, c, h * uy, w * ux))
    upsampled[:, :, ::uy, ::ux] = x
    padded = np.pad(upsampled, [(0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))])
    padded = padded[:, :, max(-py0, 0):padded.shape[2] - max(-py1, 0),
                    max(-px0, 0):padded.shape[3] - max(-px1, 0)]
    out = np.stack([np.stack([signal.convolve2d(plane, kernel, mode='valid') for plane in image])
                    for image in padded])
    return out[:, :, ::dy, ::dx]


def native_raw_upfirdn2d(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
    """The native op with the CUDA module's calling convention."""
    return upfirdn2d_native(x, kernel, (up_x, up_y), (down_x, down_y), (pad_x0, pad_x1, pad_y0, pad_y1))


class NativeBiasAct:
    """The native bias-act with the CUDA module's calling convention, counting calls."""

    def __init__(self):
        self.calls = 0

    def bias_leaky_relu(self, x, bias, negative_slope, scale):
        self.calls += 1
        return fused_leaky_relu_native(x, bias, negative_slope, scale)

    def leaky_relu_grad(self, grad, ref, negative_slope, scale):
        gain = torch.where(ref > 0, grad.new_tensor(scale), grad.new_tensor(negative_slope * scale))
        return grad * gain


# ----------------------------------------------------------------------------- native upfirdn2d

@pytest.mark.parametrize('up,down', list(itertools.product(UPS, DOWNS)))
def test_native_upfirdn2d_matches_scipy_per_axis(up, down):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7))
    taps_y, taps_x = rng.standard_normal(4), rng.standard_normal(3)
    kernel = torch.from_numpy(np.outer(taps_y, taps_x))
    for pad in PADS:
        expected = scipy_upfirdn2d_separable(x, taps_y, taps_x, up, down, pad)
        result = upfirdn2d_native(torch.from_numpy(x), kernel, up=up, down=down, pad=pad)
        assert result.shape == expected.shape, (up, down, pad)
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-12, err_msg=str((up, down, pad)))


@pytest.mark.parametrize('up,down,pad', [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (-1, 2)), (3, 2, (1, -2, 0, 3)),
                                         ((2, 1), (1, 2), (-2, 0, 2, 1))])
def test_native_upfirdn2d_matches_definition_for_non_separable_kernel(up, down, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6, 4))
    kernel = rng.standard_normal((3, 4))
    expected = direct_upfirdn2d(x, kernel, up, down, pad)
    result = upfirdn2d_native(torch.from_numpy(x), torch.from_numpy(kernel), up=up, down=down, pad=pad)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-12)


def test_upfirdn2d_is_a_true_convolution():
    # Convolving with a unit impulse at tap t delays the signal by t samples (a
    # correlation would advance it instead).
    x = torch.arange(1., 13.).reshape(1, 1, 3, 4)
    identity = upfirdn2d(x, torch.tensor([[1., 0.]]), pad=(1, 0, 0, 0))
    assert torch.equal(identity, x)
    delayed = upfirdn2d(x, torch.tensor([[0., 1.]]), pad=(1, 0, 0, 0))
    assert torch.equal(delayed[..., 1:], x[..., :-1]) and not delayed[..., 0].any()
    delayed_rows = upfirdn2d(x, torch.tensor([[0.], [1.]]), pad=(0, 0, 1, 0))
    assert torch.equal(delayed_rows[..., 1:, :], x[..., :-1, :]) and not delayed_rows[..., 0, :].any()


def test_stylegan2_resampling_shapes_and_dc_gain():
    kernel = torch.outer(torch.tensor([1., 3., 3., 1.]), torch.tensor([1., 3., 3., 1.]))
    kernel = kernel / kernel.sum()
    x = torch.full((2, 3, 8, 8), 0.5)
    up = upfirdn2d(x, kernel * 4, up=2, pad=(2, 1))
    down = upfirdn2d(x, kernel, down=2, pad=(1, 1))
    blur = upfirdn2d(x, kernel, pad=(2, 1))
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4) and blur.shape == (2, 3, 8, 8)
    # Away from the borders a normalised low-pass keeps a constant image constant.
    for out in (up, down, blur):
        assert torch.allclose(out[..., 2:-2, 2:-2], torch.full_like(out[..., 2:-2, 2:-2], 0.5))


def test_upfirdn2d_rejects_bad_arguments():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match='smaller than'):
        upfirdn2d(x, torch.ones(3, 3), pad=(-1, -1))
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'):
        upfirdn2d(torch.zeros(4, 4), torch.ones(3, 3))
    with pytest.raises(ValueError, match='factors'):
        upfirdn2d(x, torch.ones(3, 3), up=0)
    with pytest.raises(ValueError, match='pad'):
        upfirdn2d(x, torch.ones(3, 3), pad=(1, 1, 1))


@pytest.mark.parametrize('up,down,pad', [(2, 1, (2, 1)), (1, 2, (-1, 2)), ((3, 1), (1, 2), (1, -2, 0, 3))])
def test_native_upfirdn2d_gradcheck(up, down, pad):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    kernel = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: upfirdn2d_native(a, k, up, down, pad), (x, kernel))


# ----------------------------------------------------------------------------- the kernels' autograd rule

@pytest.mark.parametrize('up,down', list(itertools.product(UPS, DOWNS)))
def test_upfirdn2d_function_gradient_matches_native_autograd(up, down):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 5, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    kernel = torch.randn(4, 3, dtype=torch.float64, generator=generator)
    for pad in PADS:
        factors = normalize_factors(up, down, pad)
        expected = upfirdn2d_native(x, kernel, up, down, pad)
        result = UpFirDn2dFunction.apply(x, kernel, *factors, native_raw_upfirdn2d)
        assert torch.allclose(result, expected, atol=1e-12)
        grad_out = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
        expected_grad, = torch.autograd.grad(expected, x, grad_out)
        result_grad, = torch.autograd.grad(result, x, grad_out)
        assert torch.allclose(result_grad, expected_grad, atol=1e-12), (up, down, pad)


@pytest.mark.parametrize('up,down,pad', [(2, 1, (2, 1)), ((1, 3), (2, 1), (1, -2, 0, 3))])
def test_upfirdn2d_function_gradcheck_and_double_backward(up, down, pad):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    kernel = torch.randn(3, 2, dtype=torch.float64, generator=generator)
    factors = normalize_factors(up, down, pad)

    def apply(a):
        return UpFirDn2dFunction.apply(a, kernel, *factors, native_raw_upfirdn2d)

    assert torch.autograd.gradcheck(apply, (x,))
    assert torch.autograd.gradgradcheck(apply, (x,))


# ----------------------------------------------------------------------------- bias + leaky ReLU

def test_native_fused_leaky_relu_values():
    x = torch.tensor([[[-2.0, 0.0, 3.0]], [[1.0, -1.0, 0.5]]]).reshape(2, 1, 3).repeat(1, 2, 1)
    bias = torch.tensor([0.5, -1.0])
    pre = x + bias.reshape(1, 2, 1)
    expected = torch.where(pre > 0, pre, 0.2 * pre) * math.sqrt(2)
    assert torch.allclose(fused_leaky_relu(x, bias), expected)
    assert torch.allclose(fused_leaky_relu(x, None, 0.1, 3.0), torch.where(x > 0, x, 0.1 * x) * 3.0)


def test_fused_leaky_relu_rejects_wrong_bias():
    with pytest.raises(ValueError, match='bias'):
        fused_leaky_relu(torch.zeros(2, 3, 4), torch.zeros(4))


@pytest.mark.parametrize('shape', [(3, 4), (2, 3, 4, 5)])
def test_native_fused_leaky_relu_gradcheck(shape):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(shape[1], dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(fused_leaky_relu_native, (x, bias))


@pytest.mark.parametrize('negative_slope,scale', [(0.2, math.sqrt(2)), (-0.3, 1.5), (0.2, -2.0), (0.0, 1.0)])
@pytest.mark.parametrize('shape', [(3, 4), (2, 3, 4, 5)])
def test_fused_leaky_relu_function_gradients(shape, negative_slope, scale):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(shape[1], dtype=torch.float64, generator=generator, requires_grad=True)
    raw = NativeBiasAct()

    def apply(a, b):
        return FusedLeakyReLUFunction.apply(a, b, negative_slope, scale, raw)

    expected = fused_leaky_relu_native(x, bias, negative_slope, scale)
    result = apply(x, bias)
    assert torch.allclose(result, expected, atol=1e-12)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=generator)
    expected_grads = torch.autograd.grad(expected, (x, bias), grad_out)
    result_grads = torch.autograd.grad(result, (x, bias), grad_out)
    for got, want in zip(result_grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.autograd.gradcheck(apply, (x, bias))
    assert torch.autograd.gradgradcheck(apply, (x, bias))


def test_fused_leaky_relu_function_bias_grad_keeps_bias_dtype():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    FusedLeakyReLUFunction.apply(x, bias, 0.2, 1.0, NativeBiasAct()).sum().backward()
    assert bias.grad.dtype == torch.float32
    expected = torch.where(x > 0, 1.0, 0.2).sum((0, 2)).float()
    assert torch.allclose(bias.grad, expected)


def test_fused_leaky_relu_module_state_and_forward():
    module = FusedLeakyReLU(3)
    assert list(module.state_dict()) == ['bias'] and module.bias.shape == (3,)
    module.load_state_dict({'bias': torch.tensor([1.0, -1.0, 0.0])})
    x = torch.zeros(2, 3, 2, 2)
    out = module(x)
    assert torch.allclose(out[:, 0], torch.full((2, 2, 2), math.sqrt(2)))
    assert torch.allclose(out[:, 1], torch.full((2, 2, 2), -0.2 * math.sqrt(2)))
    assert list(FusedLeakyReLU(3, bias=False).state_dict()) == []


# ----------------------------------------------------------------------------- backend choice and build

@pytest.fixture
def fresh_backend(monkeypatch):
    """A clean backend state and no GANGEALING_OPS for the test."""
    monkeypatch.setattr(cuda_build, '_state', cuda_build._State())
    monkeypatch.delenv(cuda_build.ENV_VAR, raising=False)
    return monkeypatch


def failing_build(calls):
    def build():
        calls.append(1)
        log = '\n'.join(f'[{i}/90] compiling step {i}' for i in range(90))
        raise RuntimeError(f'Error building extension:\n{log}\nnvcc fatal : unsupported gpu architecture\n'
                           'ninja: build stopped: subcommand failed.')
    return build


def test_backend_from_environment_and_setter(fresh_backend):
    assert ops.get_backend() == 'auto'
    fresh_backend.setenv(cuda_build.ENV_VAR, 'native')
    assert ops.get_backend() == 'native'
    fresh_backend.setenv(cuda_build.ENV_VAR, 'CUDA')
    assert ops.get_backend() == 'cuda'
    ops.set_backend('native')
    assert ops.get_backend() == 'native'
    with pytest.raises(UserError, match='auto, native, cuda'):
        ops.set_backend('gpu')
    fresh_backend.setattr(cuda_build, '_state', cuda_build._State())
    fresh_backend.setenv(cuda_build.ENV_VAR, 'fast')
    with pytest.raises(UserError, match=cuda_build.ENV_VAR):
        ops.get_backend()


def test_failed_build_warns_once_and_falls_back(fresh_backend):
    calls = []
    fresh_backend.setattr(cuda_build, '_build_extension', failing_build(calls))
    gpu_tensor = types.SimpleNamespace(is_cuda=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert cuda_build.extension_for(gpu_tensor) is None
        assert cuda_build.extension_for(gpu_tensor) is None
    assert len(calls) == 1
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert 'native' in messages[0] and 'unsupported gpu architecture' in messages[0]


def test_forced_cuda_raises_with_build_log_tail(fresh_backend):
    calls = []
    fresh_backend.setattr(cuda_build, '_build_extension', failing_build(calls))
    fresh_backend.setenv(cuda_build.ENV_VAR, 'cuda')
    with pytest.raises(cuda_build.CudaBuildError) as raised:
        cuda_build.extension_for(types.SimpleNamespace(is_cuda=True))
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert 'nvcc fatal : unsupported gpu architecture' in message and 'compiling step 89' in message
    assert 'compiling step 0\n' not in message  # only the tail of the log
    # The failure is remembered: no second build, same error.
    with pytest.raises(cuda_build.CudaBuildError):
        cuda_build.extension_for(types.SimpleNamespace(is_cuda=True))
    assert len(calls) == 1


def test_native_backend_and_cpu_tensors_never_build(fresh_backend):
    fresh_backend.setattr(cuda_build, '_build_extension', failing_build([]))
    ops.set_backend('cuda')
    x = torch.randn(1, 2, 4, 4)
    assert cuda_build.extension_for(x) is None
    assert torch.equal(ops.upfirdn2d(x, torch.ones(2, 2)), upfirdn2d_native(x, torch.ones(2, 2)))
    ops.set_backend('native')
    assert cuda_build.extension_for(types.SimpleNamespace(is_cuda=True)) is None


def test_dispatch_routes_through_the_extension(fresh_backend):
    raw = NativeBiasAct()
    upfirdn_calls = []

    def counted_upfirdn2d(*args):
        upfirdn_calls.append(args[2:])
        return native_raw_upfirdn2d(*args)

    raw.upfirdn2d = counted_upfirdn2d
    fresh_backend.setattr(cuda_build, 'extension_for', lambda tensor: raw)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(4, 4, dtype=torch.float64)
    out = ops.upfirdn2d(x, kernel, up=2, pad=(2, 1))
    assert upfirdn_calls == [(2, 2, 1, 1, 2, 1, 2, 1)]
    assert torch.allclose(out, upfirdn2d_native(x, kernel, up=2, pad=(2, 1)))
    out.sum().backward()
    assert len(upfirdn_calls) == 2  # the gradient ran through the same kernel
    assert upfirdn_calls[1] == (1, 1, 2, 2, 1, 2, 1, 2)

    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = ops.fused_leaky_relu(x, bias)
    assert raw.calls == 1 and y.grad_fn.name().startswith('FusedLeakyReLUFunction')
    # A kernel that needs its own gradient takes the native path.
    ops.upfirdn2d(x, kernel.clone().requires_grad_(), up=2, pad=(2, 1))
    assert len(upfirdn_calls) == 2


def test_extension_name_follows_sources(fresh_backend, tmp_path):
    for name in cuda_build.CPP_SOURCES + cuda_build.CUDA_SOURCES + cuda_build.HEADERS:
        (tmp_path / name).write_text(f'// {name}\n')
    fresh_backend.setattr(cuda_build, 'SOURCE_DIR', str(tmp_path))
    first = cuda_build.extension_name()
    assert first == cuda_build.extension_name() and first.startswith('gangealing_fused_ops_')
    (tmp_path / cuda_build.CUDA_SOURCES[0]).write_text('// changed\n')
    assert cuda_build.extension_name() != first
    fresh_backend.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path / 'cache'))
    assert cuda_build.extensions_root() == str(tmp_path / 'cache')


def test_build_lock_is_exclusive(tmp_path):
    fcntl = pytest.importorskip('fcntl')
    path = tmp_path / 'build.lock'
    with file_lock(str(path)):
        with open(path, 'a') as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(path, 'a') as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
