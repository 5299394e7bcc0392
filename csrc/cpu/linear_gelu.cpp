// linear_gelu on CPU: y = GELU_tanh(x W^T + b), the first half of every transformer MLP.
// Eager PyTorch runs addmm (which first copies b into every output row, then a GEMM accumulating onto
// it), then GELU as its own pass; backward runs gelu_backward, then sums dh over rows for db in another
// pass. Here: h = x W^T (one GEMM on the engine of gemm.h, no bias copy), then one pass
// y = GELU(h + b) that computes tanh with the vectorised fast::tanh; backward is one pass
// dh = g * GELU'(h + b) that also accumulates db, then the two GEMMs dx = dh W (gemm.h's engine) and
// dW = dh^T x (at::mm). h (without b) is saved for the backward, as PyTorch saves the GELU input; the
// inference form (linear_gelu_inference, for sampling under no_grad) keeps no h: GELU runs in place, or,
// on the mdt GEMM engine, in the GEMM's epilogue on each block of y while it is in L2.
// db: rows are split in fixed chunks of kRowChunk, each with its own acc_t partial, added in chunk order:
// deterministic for any thread count.
#include <torch/library.h>

#include <vector>

#include "gemm.h"
#include "ops/adaln.h"
#include "ops/linear_gelu.h"
#include "tensor_view.h"
#include "vec/linear_gelu.h"

namespace mdt {
namespace {

using cpu::view;
constexpr int64_t kRowChunk = cpu::kLinearGeluRowChunk;

std::tuple<at::Tensor, at::Tensor> linear_gelu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                   const at::Tensor& bias) {
  check_linear_gelu(x, weight, bias);
  const auto h = gemm::linear(linear_as_rows(x), weight, std::nullopt);  // (M, Dout), no bias
  auto y = at::empty_like(h);
  const auto b = bias.contiguous();
  if (h.numel() > 0) {
    cpu::linear_gelu_fwd()(view(h), view(b), view(y));
  }
  return {y.view(linear_out_shape(x, weight.size(0))), h};
}

at::Tensor linear_gelu_inference_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_linear_gelu(x, weight, bias);
  const auto x2 = linear_as_rows(x);
  if (auto fused = gemm::linear_gelu_tanh(x2, weight, bias)) {  // bias and GELU in the GEMM's epilogue
    return fused->view(linear_out_shape(x, weight.size(0)));
  }
  auto y = gemm::linear(x2, weight, std::nullopt);  // (M, Dout), no bias
  const auto b = bias.contiguous();
  if (y.numel() > 0) {
    cpu::linear_gelu_fwd()(view(y), view(b), view(y));  // in place: each row is read whole before it is written
  }
  return y.view(linear_out_shape(x, weight.size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_gelu_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                        const at::Tensor& weight,
                                                                        const at::Tensor& bias, const at::Tensor& h) {
  check_linear_gelu_backward(grad, x, weight, bias, h);
  const auto x2 = linear_as_rows(x);
  const auto g = linear_as_rows(grad);
  const auto hc = h.contiguous();
  const auto b = bias.contiguous();
  const int64_t M = hc.size(0), D = hc.size(1);
  auto dh = at::empty_like(hc);
  const int64_t C = (M + kRowChunk - 1) / kRowChunk;
  auto partial = at::empty({C, D}, hc.options().dtype(adaln::acc_dtype(hc)));
  if (hc.numel() > 0) {
    cpu::linear_gelu_bwd()(view(g), view(hc), view(b), view(dh), view(partial));
  }
  auto db_acc = at::zeros({D}, partial.options());
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "linear_gelu_db", [&] {
    scalar_t* acc = db_acc.data_ptr<scalar_t>();
    const scalar_t* p = partial.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c)  // chunk partials, added in chunk order
      for (int64_t d = 0; d < D; ++d) acc[d] += p[c * D + d];
  });
  const auto db = db_acc.to(bias.scalar_type());
  const auto dx = gemm::linear(dh, weight.t(), std::nullopt).view(x.sizes());
  const auto dw = at::mm(dh.t(), x2);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // y = GELU_tanh(x W^T + b) for x (..., Din), W (Dout, Din), b (Dout); also returns h = x W^T as
  // (rows of x, Dout), saved for the backward.
  m.def("linear_gelu(Tensor x, Tensor weight, Tensor bias) -> (Tensor, Tensor)");
  // The same y without h, for a forward no backward will follow (sampling under no_grad; CPU).
  m.def("linear_gelu_inference(Tensor x, Tensor weight, Tensor bias) -> Tensor");
  // -> (dx, dweight, dbias)
  m.def("linear_gelu_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor h) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("linear_gelu", &linear_gelu_cpu);
  m.impl("linear_gelu_inference", &linear_gelu_inference_cpu);
  m.impl("linear_gelu_backward", &linear_gelu_backward_cpu);
}

}  // namespace mdt
