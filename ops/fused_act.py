"""Fused bias + leaky-ReLU + gain: dispatch, autograd rule of the CUDA kernel, module."""
import torch
from torch import nn

from ops import cuda_build
from ops.fused_act_native import check_bias, fused_leaky_relu_native


def _bias_grad_dims(ndim):
    return [0] + list(range(2, ndim))


class LeakyReLUGradFunction(torch.autograd.Function):
    """grad * gain(ref): the input gradient of the bias-act, itself differentiable.

    The gain (scale where ref > 0, negative_slope * scale elsewhere) is
    piecewise constant, so this is linear in ``grad`` and its own gradient is
    the same map applied to the incoming gradient; ``ref`` gets none.
    """

    @staticmethod
    def forward(ctx, grad, ref, negative_slope, scale, raw):
        ctx.save_for_backward(ref)
        ctx.args = (negative_slope, scale, raw)
        return raw.leaky_relu_grad(grad, ref, negative_slope, scale)

    @staticmethod
    def backward(ctx, grad_grad):
        ref, = ctx.saved_tensors
        negative_slope, scale, raw = ctx.args
        return LeakyReLUGradFunction.apply(grad_grad, ref, negative_slope, scale, raw), None, None, None, None


class FusedLeakyReLUFunction(torch.autograd.Function):
    """Autograd rule around a forward-only bias + leaky-ReLU + gain implementation.

    ``raw`` provides ``bias_leaky_relu(x, bias or None, negative_slope, scale)``
    and ``leaky_relu_grad(grad, ref, negative_slope, scale)`` (the CUDA module).
    The input gradient is the output gradient times the gain picked by the
    sign of the pre-activation; the bias gradient is that summed over every
    dimension but 1.
    """

    @staticmethod
    def forward(ctx, x, bias, negative_slope, scale, raw):
        bias_cast = None if bias is None else bias.to(x.dtype)
        y = raw.bias_leaky_relu(x, bias_cast, negative_slope, scale)
        if negative_slope > 0 and scale > 0:
            ref = y  # same sign as x + bias; saves keeping the pre-activation
        elif bias_cast is None:
            ref = x
        else:
            ref = x + bias_cast.reshape([1, -1] + [1] * (x.ndim - 2))
        ctx.save_for_backward(ref)
        ctx.args = (negative_slope, scale, raw)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        ref, = ctx.saved_tensors
        negative_slope, scale, raw = ctx.args
        grad_x = LeakyReLUGradFunction.apply(grad, ref, negative_slope, scale, raw)
        grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_bias = grad_x.sum(_bias_grad_dims(grad_x.ndim)).to(ctx.bias_dtype)
        return grad_x, grad_bias, None, None, None


def fused_leaky_relu(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """leaky_relu(x + bias[None, :, None, ...], negative_slope) * scale.

    Args:
        x: (N, C, ...) tensor, any float dtype, any device.
        bias: (C,) tensor or None.
    Returns:
        tensor shaped like ``x``.

    CUDA tensors of float16/bfloat16/float32/float64 run our CUDA kernel unless
    the backend is 'native' (see ops.cuda_build); everything else runs the
    native implementation.
    """
    check_bias(x, bias)
    extension = cuda_build.extension_for(x)
    if extension is None or x.dtype not in cuda_build.KERNEL_DTYPES:
        return fused_leaky_relu_native(x, bias, negative_slope, scale)
    if bias is not None:
        bias = bias.to(device=x.device)
    return FusedLeakyReLUFunction.apply(x, bias, float(negative_slope), float(scale), extension)


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias followed by a scaled leaky ReLU (state key: ``bias``).

    Input (N, channel, ...), output of the same shape.
    """

    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        if bias:
            self.bias = nn.Parameter(torch.zeros(channel))
        else:
            self.register_parameter('bias', None)
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)

    def extra_repr(self):
        channels = None if self.bias is None else self.bias.shape[0]
        return f'channel={channels}, negative_slope={self.negative_slope}, scale={self.scale:.4g}'
