"""Fused ops used by StyleGAN2 and the spatial transformers.

``upfirdn2d`` and ``fused_leaky_relu`` run a native PyTorch implementation on
the CPU and our own CUDA kernels on a GPU (built lazily with ninja on the first
CUDA call).  ``set_backend('auto'|'native'|'cuda')`` or the environment
variable GANGEALING_OPS chooses between them; see ops/cuda_build.py.
"""
from ops.cuda_build import CudaBuildError, get_backend, set_backend
from ops.fused_act import FusedLeakyReLU, fused_leaky_relu
from ops.upfirdn2d import upfirdn2d

__all__ = ['upfirdn2d', 'fused_leaky_relu', 'FusedLeakyReLU', 'set_backend', 'get_backend',
           'CudaBuildError']
