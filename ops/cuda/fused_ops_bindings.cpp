// Python bindings of the fused-op CUDA kernels; built by ops/cuda_build.py.
// torch/csrc/utils/pybind.h has the pybind11 casters for tensors and is a
// fraction of torch/extension.h (the whole C++ frontend) to compile.
#include <torch/csrc/utils/pybind.h>

#include "fused_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "upfirdn2d and bias + leaky-ReLU CUDA kernels";
  m.def("upfirdn2d", &upfirdn2d_cuda,
        "Upsample by zero insertion, pad, convolve with a 2D FIR kernel, downsample",
        py::arg("x"), py::arg("kernel"), py::arg("up_x"), py::arg("up_y"),
        py::arg("down_x"), py::arg("down_y"), py::arg("pad_x0"), py::arg("pad_x1"),
        py::arg("pad_y0"), py::arg("pad_y1"));
  m.def("bias_leaky_relu", &bias_leaky_relu_cuda,
        "leaky_relu(x + bias, negative_slope) * scale",
        py::arg("x"), py::arg("bias"), py::arg("negative_slope"), py::arg("scale"));
  m.def("leaky_relu_grad", &leaky_relu_grad_cuda,
        "grad * (scale if ref > 0 else negative_slope * scale)",
        py::arg("grad"), py::arg("ref"), py::arg("negative_slope"), py::arg("scale"));
}
