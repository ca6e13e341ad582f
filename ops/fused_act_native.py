"""Native PyTorch bias + leaky-ReLU + gain: the CPU path and the CUDA reference."""
import torch.nn.functional as F


def check_bias(x, bias):
    """Raise ValueError unless bias is None or a (C,) tensor with C = x.shape[1]."""
    if bias is None:
        return
    if x.ndim < 2 or bias.ndim != 1 or bias.shape[0] != x.shape[1]:
        raise ValueError(f'fused_leaky_relu: bias of shape {tuple(bias.shape)} does not match '
                         f'x of shape {tuple(x.shape)} (expected a ({x.shape[1] if x.ndim > 1 else "C"},) bias '
                         'added along dimension 1)')


def fused_leaky_relu_native(x, bias=None, negative_slope=0.2, scale=2 ** 0.5):
    """leaky_relu(x + bias, negative_slope) * scale.

    Args:
        x: (N, C, ...) tensor (any float dtype).
        bias: (C,) tensor added along dimension 1 (cast to x's dtype), or None.
    Returns:
        tensor shaped like ``x``; differentiable to any order.
    """
    check_bias(x, bias)
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.reshape(shape).to(x.dtype)
    # leaky_relu's backward reads its input, not its result, so scaling the
    # result in place is safe for autograd and saves one allocation.
    return F.leaky_relu(x, negative_slope).mul_(scale)
