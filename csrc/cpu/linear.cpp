// linear on CPU: y = x W^T + b through the GEMM engine of gemm.h (mdt, oneDNN or ATen, bias in the
// epilogue). Backward: dx = g W on the engine gemm.h picks for that layout (w^T passed as a strided view, no
// copy), dW = g^T x with at::mm (MKL is faster than oneDNN on that layout), db = the column sums of g.
#include <torch/library.h>

#include "gemm.h"
#include "ops/linear.h"

namespace mdt {
namespace {

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear(x, weight, bias);
  const auto y = gemm::linear(linear_as_rows(x), weight, bias);  // (M, Dout)
  return y.view(linear_out_shape(x, weight.size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                   const at::Tensor& weight, bool has_bias) {
  check_linear_backward(grad, x, weight);
  const auto g = linear_as_rows(grad);  // (M, Dout)
  const auto dx = gemm::linear(g, weight.t(), std::nullopt).view(x.sizes());
  const auto dw = at::mm(g.t(), linear_as_rows(x));
  const auto db = has_bias ? g.sum(0) : at::empty({0}, g.options());
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // y = x W^T + b for x (..., Din), W (Dout, Din), b (Dout) or none: nn.Linear, on the CPU GEMM engine.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // -> (dx, dweight, dbias), dbias of shape (0,) when has_bias is false
  m.def("linear_backward(Tensor grad, Tensor x, Tensor weight, bool has_bias) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace mdt
