"""upfirdn2d entry point: dispatch between the native path and our CUDA kernel.

The kernel only computes the forward pass; UpFirDn2dFunction supplies the
gradient, which is itself an upfirdn2d (see backward_factors), so gradients
of any order come from the same kernel.
"""
import torch

from ops import cuda_build
from ops.upfirdn2d_native import check_arguments, normalize_factors, output_size, upfirdn2d_native


def backward_factors(in_size, kernel_size, up, down, pad):
    """upfirdn2d arguments that map the output gradient to the input gradient.

    The forward is  downsample(d) . convolve(k) . pad(p0, p1) . upsample(u).
    Its adjoint, read right to left, is  keep every u-th . crop . correlate(k)
    . zero-insert(d), i.e. an upfirdn2d of the gradient with the flipped
    kernel, up = d, down = u and, per axis,
        pad0' = K - 1 - p0,  pad1' = n * u + p0 - m * d
    (n input and m output samples), which makes the result exactly n long.

    Args:
        in_size: (H, W) of the forward input.
        kernel_size: (kh, kw).
        up, down, pad: normalised factors (see normalize_factors).
    Returns:
        (up, down, pad) for the backward call, normalised.
    """
    (in_h, in_w), (kh, kw) = in_size, kernel_size
    (ux, uy), (dx, dy), (px0, _, py0, _) = up, down, pad
    out_h, out_w = output_size(in_h, in_w, kh, kw, up, down, pad)
    grad_pad = (kw - 1 - px0, in_w * ux + px0 - out_w * dx,
                kh - 1 - py0, in_h * uy + py0 - out_h * dy)
    return (dx, dy), (ux, uy), grad_pad


class UpFirDn2dFunction(torch.autograd.Function):
    """Autograd rule around a forward-only upfirdn2d implementation.

    ``forward(x, kernel, up, down, pad, raw)`` with normalised factors and
    ``raw(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)``
    (the CUDA module's ``upfirdn2d``).  No gradient for ``kernel``: callers
    that need one use the native path.
    """

    @staticmethod
    def forward(ctx, x, kernel, up, down, pad, raw):
        ctx.save_for_backward(kernel)
        ctx.in_size = tuple(x.shape[2:])
        ctx.factors = (up, down, pad)
        ctx.raw = raw
        return raw(x, kernel, *up, *down, *pad)

    @staticmethod
    def backward(ctx, grad):
        kernel, = ctx.saved_tensors
        up, down, pad = backward_factors(ctx.in_size, tuple(kernel.shape), *ctx.factors)
        # Calling the Function again keeps this differentiable (double backward).
        grad_x = UpFirDn2dFunction.apply(grad, torch.flip(kernel, (0, 1)), up, down, pad, ctx.raw)
        return grad_x, None, None, None, None, None


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Upsample by zero insertion, pad, convolve with ``kernel``, downsample.

    Args:
        x: (N, C, H, W) tensor, any float dtype, any device.
        kernel: (kh, kw) FIR filter, applied as a true convolution (flipped),
            as scipy.signal.upfirdn does.
        up, down: int or (x, y) integer factors >= 1.
        pad: int, (before, after) for both axes, or (x0, x1, y0, y1);
            negative values crop.
    Returns:
        (N, C, out_h, out_w) with out_h = (H * up_y + py0 + py1 - kh) // down_y + 1
        (likewise for the width).

    CUDA tensors of float16/bfloat16/float32/float64 run our CUDA kernel unless
    the backend is 'native' (see ops.cuda_build); everything else, and a kernel
    that requires grad, runs the native implementation.
    """
    up, down, pad = normalize_factors(up, down, pad)
    check_arguments(x, kernel, up, down, pad)
    extension = cuda_build.extension_for(x)
    if extension is None or kernel.requires_grad or x.dtype not in cuda_build.KERNEL_DTYPES:
        return upfirdn2d_native(x, kernel, up=up, down=down, pad=pad)
    kernel = kernel.to(device=x.device)
    return UpFirDn2dFunction.apply(x, kernel, up, down, pad, extension.upfirdn2d)
