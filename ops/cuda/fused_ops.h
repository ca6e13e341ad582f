// Host entry points of the fused-op CUDA kernels (defined in the .cu files,
// exposed to Python by fused_ops_bindings.cpp).
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

// upfirdn2d: zero-insertion upsampling by (up_x, up_y), padding (negative
// values crop), a true 2D convolution with `kernel` (kh, kw), then keeping
// every (down_x, down_y)-th sample.  x: (N, C, H, W) on a CUDA device.
at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel,
                          int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y,
                          int64_t pad_x0, int64_t pad_x1,
                          int64_t pad_y0, int64_t pad_y1);

// y = leaky_relu(x + bias, negative_slope) * scale, bias (C,) broadcast along
// dimension 1 of x (N, C, ...).
at::Tensor bias_leaky_relu_cuda(const at::Tensor& x,
                                const std::optional<at::Tensor>& bias,
                                double negative_slope, double scale);

// grad * (scale if ref > 0 else negative_slope * scale): the gradient of the
// bias + leaky-ReLU with respect to its input, where `ref` has the sign of the
// pre-activation x + bias.
at::Tensor leaky_relu_grad_cuda(const at::Tensor& grad, const at::Tensor& ref,
                                double negative_slope, double scale);
