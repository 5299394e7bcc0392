// gated_residual on CPU: out = x + gate[b] * y in one pass (eager: gate*y to a temporary, then the add).
// Backward with g = dout: dx = g (returned by the Python autograd rule, no copy), dy = gate[b] * g,
// dgate[b] = sum_n g * y. One task per (sample, token chunk): reads g and y, writes dy and the
// chunk's dgate partial; chunks are added in order (deterministic for any thread count).
#include <torch/library.h>

#include "ops/adaln.h"
#include "tensor_view.h"
#include "vec/adaln.h"

namespace mdt {
namespace {

using cpu::view;

at::Tensor gated_residual_cpu(const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y_in) {
  adaln::check_gated_residual(x_in, gate, y_in);
  const auto x = x_in.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  cpu::gated_residual_fwd()(view(x), view(gate), view(y_in.contiguous()), view(out));
  return out;
}

// -> (dgate, dy)
std::tuple<at::Tensor, at::Tensor> gated_residual_backward_cpu(const at::Tensor& grad, const at::Tensor& gate,
                                                               const at::Tensor& y_in) {
  adaln::check_gated_residual_backward(grad, gate, y_in);
  const auto y = y_in.contiguous();
  const int64_t B = y.size(0), N = y.size(1), D = y.size(2);
  const int64_t C = (N + cpu::kAdalnTokenChunk - 1) / cpu::kAdalnTokenChunk;
  auto dy = at::empty({B, N, D}, y.options());
  auto dgate = at::empty({B, D}, y.options());
  if (B * D == 0) return {dgate, dy};
  auto partial = at::empty({B, C, D}, y.options().dtype(adaln::acc_dtype(y)));
  cpu::gated_residual_bwd()(view(grad.contiguous()), view(gate), view(y), view(dy), view(partial));
  const cpu::View outs[] = {view(dgate)};
  cpu::reduce_chunks()(view(partial.unsqueeze(0)), outs, 1);
  return {dgate, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("gated_residual", &gated_residual_cpu);
  m.impl("gated_residual_backward", &gated_residual_backward_cpu);
}

}  // namespace mdt
