// Bias + leaky ReLU + gain on CUDA, and its gradient.
//
// Forward:  y = g(v) * v with v = x + bias[c], g(v) = scale if v > 0 else
// negative_slope * scale.  The map is linear on either side of zero, so the
// gradient with respect to x is the incoming gradient times the same gain
// g(v); only the sign of v matters, and the caller passes any tensor with that
// sign (the output itself when negative_slope and scale are positive).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>

#include "fused_ops.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;
// 32-bit flat indices (much cheaper to divide on the GPU) are used when every
// index, plus one grid-stride step, stays below this bound.
constexpr int64_t kMaxInt32Index = INT_MAX - kMaxBlocks * kThreads;

// Calls launch(index_zero) with a zero of the narrowest index type that holds
// every flat index of `total` elements (see kMaxInt32Index).
template <typename Launch>
void with_index_type(int64_t total, Launch&& launch) {
  if (total <= kMaxInt32Index) {
    launch(int32_t{0});
  } else {
    launch(int64_t{0});
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void bias_leaky_relu_kernel(const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ bias,
                                       scalar_t* __restrict__ y, index_t total,
                                       index_t channels, index_t inner,
                                       acc_t positive_gain, acc_t negative_gain) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t index = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < total; index += stride) {
    acc_t value = static_cast<acc_t>(x[index]);
    if (bias != nullptr) {
      value += static_cast<acc_t>(bias[(index / inner) % channels]);
    }
    y[index] = static_cast<scalar_t>(value * (value > acc_t(0) ? positive_gain : negative_gain));
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void leaky_relu_grad_kernel(const scalar_t* __restrict__ grad,
                                       const scalar_t* __restrict__ ref,
                                       scalar_t* __restrict__ out, index_t total,
                                       acc_t positive_gain, acc_t negative_gain) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t index = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < total; index += stride) {
    const acc_t gain = static_cast<acc_t>(ref[index]) > acc_t(0) ? positive_gain : negative_gain;
    out[index] = static_cast<scalar_t>(static_cast<acc_t>(grad[index]) * gain);
  }
}

// Enough blocks to fill any current GPU; the grid-stride loops cover the rest.
unsigned int grid_size(int64_t total) {
  return static_cast<unsigned int>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
}

}  // namespace

at::Tensor bias_leaky_relu_cuda(const at::Tensor& x,
                                const std::optional<at::Tensor>& bias,
                                double negative_slope, double scale) {
  TORCH_CHECK(x.is_cuda(), "bias_leaky_relu: x must be a CUDA tensor");
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK(x.dim() >= 2, "bias_leaky_relu: x must be (N, C, ...) when a bias is given");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1),
                "bias_leaky_relu: bias must be (C,) with C = x.size(1) = ", x.size(1));
    TORCH_CHECK(bias->device() == x.device(), "bias_leaky_relu: bias and x are on different devices");
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias_leaky_relu: bias and x differ in dtype");
  }

  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::Tensor input = x.contiguous();
  const at::Tensor bias_values = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor output = at::empty_like(input);
  const int64_t total = input.numel();
  if (total == 0) {
    return output;
  }
  const int64_t channels = has_bias ? x.size(1) : 1;
  const int64_t inner = has_bias ? total / (x.size(0) * channels) : 1;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_leaky_relu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      bias_leaky_relu_kernel<scalar_t, acc_t, index_t><<<grid_size(total), kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), has_bias ? bias_values.data_ptr<scalar_t>() : nullptr,
          output.data_ptr<scalar_t>(), static_cast<index_t>(total), static_cast<index_t>(channels),
          static_cast<index_t>(inner), static_cast<acc_t>(scale),
          static_cast<acc_t>(negative_slope * scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    with_index_type(total, launch);
  });
  return output;
}

at::Tensor leaky_relu_grad_cuda(const at::Tensor& grad, const at::Tensor& ref,
                                double negative_slope, double scale) {
  TORCH_CHECK(grad.is_cuda() && ref.is_cuda(), "leaky_relu_grad: tensors must be on a CUDA device");
  TORCH_CHECK(grad.sizes() == ref.sizes(), "leaky_relu_grad: grad and ref differ in shape");
  TORCH_CHECK(grad.device() == ref.device(), "leaky_relu_grad: grad and ref are on different devices");
  TORCH_CHECK(grad.scalar_type() == ref.scalar_type(), "leaky_relu_grad: grad and ref differ in dtype");

  const c10::cuda::CUDAGuard device_guard(grad.device());
  const at::Tensor grad_values = grad.contiguous();
  const at::Tensor ref_values = ref.contiguous();
  at::Tensor output = at::empty_like(grad_values);
  const int64_t total = grad_values.numel();
  if (total == 0) {
    return output;
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "leaky_relu_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      leaky_relu_grad_kernel<scalar_t, acc_t, index_t><<<grid_size(total), kThreads, 0, stream>>>(
          grad_values.data_ptr<scalar_t>(), ref_values.data_ptr<scalar_t>(),
          output.data_ptr<scalar_t>(), static_cast<index_t>(total),
          static_cast<acc_t>(scale), static_cast<acc_t>(negative_slope * scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    with_index_type(total, launch);
  });
  return output;
}
