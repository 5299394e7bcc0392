// Shape/dtype/device checks and row helpers of linear (and of linear_gelu, which builds on them).
#pragma once
#include <optional>
#include <vector>

#include "mdt_checks.h"

namespace mdt {

// Rows of x (..., Din): the product of its leading dimensions.
inline int64_t linear_rows(const at::Tensor& x) {
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) rows *= x.size(i);
  return rows;
}

// t (..., D) as a contiguous (rows, D) matrix.
inline at::Tensor linear_as_rows(const at::Tensor& t) {
  return t.reshape({linear_rows(t), t.size(-1)}).contiguous();
}

// x's shape with the last dimension Dout: the shape of y and of its gradient.
inline std::vector<int64_t> linear_out_shape(const at::Tensor& x, int64_t dout) {
  auto shape = x.sizes().vec();
  shape.back() = dout;
  return shape;
}

// x (..., Din), weight (Dout, Din), bias (Dout,) when given; one float dtype, one device.
inline void check_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_opt) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension (..., Din), got shape ", x.sizes());
  MDT_CHECK_DIM(weight, 2);
  MDT_CHECK_FLOAT(x);
  MDT_CHECK_SAME_DTYPE(x, weight);
  MDT_CHECK_SAME_DEVICE(x, weight);
  TORCH_CHECK_VALUE(weight.size(1) == x.size(-1), "weight has shape ", weight.sizes(), " but x has ", x.size(-1),
                    " input features");
  if (bias_opt.has_value()) {
    const at::Tensor& bias = *bias_opt;
    MDT_CHECK_DIM(bias, 1);
    MDT_CHECK_SAME_DTYPE(x, bias);
    MDT_CHECK_SAME_DEVICE(x, bias);
    TORCH_CHECK_VALUE(bias.size(0) == weight.size(0), "bias has ", bias.size(0), " elements but weight has ",
                      weight.size(0), " output features");
  }
}

// check_linear, and grad of y's shape (x's with the last dimension Dout).
inline void check_linear_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias_opt = std::nullopt) {
  check_linear(x, weight, bias_opt);
  MDT_CHECK_SAME_DTYPE(x, grad);
  MDT_CHECK_SAME_DEVICE(x, grad);
  const auto out_shape = linear_out_shape(x, weight.size(0));
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(out_shape), "grad shape ", grad.sizes(), " does not match ",
                    at::IntArrayRef(out_shape));
}

}  // namespace mdt
