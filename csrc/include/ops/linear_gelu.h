// Shape/dtype/device checks of linear_gelu, shared by its kernels (row helpers: ops/linear.h).
#pragma once
#include "ops/linear.h"

namespace mdt {

// x (..., Din), weight (Dout, Din), bias (Dout,), one float dtype, one device.
inline void check_linear_gelu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_linear(x, weight, bias);
}

inline void check_linear_gelu_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& bias, const at::Tensor& h) {
  check_linear_backward(grad, x, weight, bias);
  MDT_CHECK_SAME_DTYPE(x, h);
  MDT_CHECK_SAME_DEVICE(x, h);
  TORCH_CHECK_VALUE(h.dim() == 2 && h.size(0) == linear_rows(x) && h.size(1) == weight.size(0),
                    "h must have shape (rows of x, Dout), got ", h.sizes());
}

}  // namespace mdt
