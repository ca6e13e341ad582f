// upfirdn2d forward on CUDA: one thread per output sample.
//
// Along one axis, output sample o reads the upsampled-and-padded signal at
// positions o * down + j for the kernel taps j = 0 .. K-1.  Relative to the
// upsampled signal before padding that is s + j with s = o * down - pad0, and
// only multiples of `up` hold input samples (the rest are inserted zeros).  So
// instead of visiting all K taps we visit the input samples i with
// s <= i * up <= s + K - 1 (and 0 <= i < n_in), each with tap j = i * up - s.
// The kernel is flipped once on the host, which turns the correlation below
// into the true convolution that upfirdn2d is defined with.

// Narrow ATen headers rather than ATen/ATen.h keep the compile short.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "fused_ops.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;
// 32-bit flat indices (much cheaper to divide on the GPU) are used when every
// index, plus one grid-stride step, stays below this bound.
constexpr int64_t kMaxInt32Index = INT_MAX - kMaxBlocks * kThreads;

// Division rounding towards minus infinity (C++ rounds towards zero), for a
// positive divisor.
__device__ __forceinline__ int floor_div(int a, int b) {
  const int q = a / b;
  return (q * b > a) ? q - 1 : q;
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x,
                                 const acc_t* __restrict__ flipped_kernel,
                                 scalar_t* __restrict__ y,
                                 index_t planes, int in_h, int in_w,
                                 int out_h, int out_w, int kernel_h, int kernel_w,
                                 int up_x, int up_y, int down_x, int down_y,
                                 int pad_x0, int pad_y0) {
  const index_t total = planes * out_h * out_w;
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t index = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       index < total; index += stride) {
    const int out_x = static_cast<int>(index % out_w);
    const index_t row = index / out_w;
    const int out_y = static_cast<int>(row % out_h);
    const index_t plane = row / out_h;

    // First tap's position in the upsampled signal before padding, and the
    // range of input samples that land under the kernel.
    const int start_x = out_x * down_x - pad_x0;
    const int start_y = out_y * down_y - pad_y0;
    const int first_x = max(floor_div(start_x + up_x - 1, up_x), 0);
    const int last_x = min(floor_div(start_x + kernel_w - 1, up_x), in_w - 1);
    const int first_y = max(floor_div(start_y + up_y - 1, up_y), 0);
    const int last_y = min(floor_div(start_y + kernel_h - 1, up_y), in_h - 1);

    const scalar_t* source = x + plane * in_h * in_w;
    acc_t sum = 0;
    for (int in_y = first_y; in_y <= last_y; ++in_y) {
      const int tap_row = (in_y * up_y - start_y) * kernel_w;
      const scalar_t* source_row = source + static_cast<index_t>(in_y) * in_w;
      for (int in_x = first_x; in_x <= last_x; ++in_x) {
        sum += static_cast<acc_t>(source_row[in_x]) *
               flipped_kernel[tap_row + in_x * up_x - start_x];
      }
    }
    y[index] = static_cast<scalar_t>(sum);
  }
}

int checked_int(int64_t value, const char* what) {
  TORCH_CHECK(value >= INT_MIN / 2 && value <= INT_MAX / 2, "upfirdn2d: ", what,
              " is too large for the kernel's 32-bit coordinates: ", value);
  return static_cast<int>(value);
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel,
                          int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y,
                          int64_t pad_x0, int64_t pad_x1,
                          int64_t pad_y0, int64_t pad_y1) {
  TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be (N, C, H, W), got ", x.dim(), " dims");
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be (kh, kw), got ", kernel.dim(), " dims");
  TORCH_CHECK(kernel.numel() > 0, "upfirdn2d: kernel is empty");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1,
              "upfirdn2d: up and down factors must be >= 1");

  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t in_h = x.size(2), in_w = x.size(3);
  const int64_t kernel_h = kernel.size(0), kernel_w = kernel.size(1);
  const int64_t padded_h = in_h * up_y + pad_y0 + pad_y1;
  const int64_t padded_w = in_w * up_x + pad_x0 + pad_x1;
  TORCH_CHECK(padded_h >= kernel_h && padded_w >= kernel_w,
              "upfirdn2d: the padded signal is smaller than the kernel");
  // Every coordinate the kernel forms is bounded by these.
  checked_int(in_h * up_y + std::abs(pad_y0) + std::abs(pad_y1) + kernel_h, "upsampled height");
  checked_int(in_w * up_x + std::abs(pad_x0) + std::abs(pad_x1) + kernel_w, "upsampled width");
  checked_int(down_x, "down_x");
  checked_int(down_y, "down_y");
  const int64_t out_h = (padded_h - kernel_h) / down_y + 1;
  const int64_t out_w = (padded_w - kernel_w) / down_x + 1;

  const at::Tensor input = x.contiguous();
  at::Tensor output = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
  const int64_t planes = x.size(0) * x.size(1);
  const int64_t total = planes * out_h * out_w;
  if (total == 0) {
    return output;
  }

  // Enough blocks to fill any current GPU; the grid-stride loop covers the rest.
  const unsigned int blocks =
      static_cast<unsigned int>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
  const bool int32_indices = std::max(total, input.numel()) <= kMaxInt32Index;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor flipped = kernel.to(output.options().dtype(c10::CppTypeToScalarType<acc_t>::value))
                                   .flip({0, 1})
                                   .contiguous();
    auto launch = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      upfirdn2d_kernel<scalar_t, acc_t, index_t><<<blocks, kThreads, 0, stream>>>(
          input.data_ptr<scalar_t>(), flipped.data_ptr<acc_t>(), output.data_ptr<scalar_t>(),
          static_cast<index_t>(planes), static_cast<int>(in_h), static_cast<int>(in_w),
          static_cast<int>(out_h), static_cast<int>(out_w),
          static_cast<int>(kernel_h), static_cast<int>(kernel_w),
          static_cast<int>(up_x), static_cast<int>(up_y),
          static_cast<int>(down_x), static_cast<int>(down_y),
          static_cast<int>(pad_x0), static_cast<int>(pad_y0));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (int32_indices) {
      launch(int32_t{0});
    } else {
      launch(int64_t{0});
    }
  });
  return output;
}
