// residual_adaln_modulate on CPU: h = x + gate[b] * y, out = LayerNorm_no_affine(h) * (1 + scale[b]) +
// shift[b], in one pass: read x and y, write h and out. The statistics are taken from h as stored (rounded
// to its dtype), so the result equals gated_residual followed by adaln_modulate.
//
// Backward with g = dout, gh = dh from the residual stream (may be absent), hhat = (h - mean) * rstd,
// a = 1 + scale[b]:
//   dshift[b] = sum_n g,  dscale[b] = sum_n g * hhat,
//   dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a * hhat)) + gh,
//   dx = dh,  dy = gate[b] * dh,  dgate[b] = sum_n dh * y.
// One task per (sample, token chunk), two passes over each (cached) row: reads h, y, g, gh; writes dx, dy.
#include <torch/library.h>

#include <optional>

#include "ops/adaln.h"
#include "tensor_view.h"
#include "vec/adaln.h"

namespace mdt {
namespace {

using cpu::view;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_cpu(
    const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  adaln::check_residual_adaln_modulate(x_in, gate, y, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto h = at::empty({B, N, D}, x.options());
  auto out = at::empty({B, N, D}, x.options());
  auto mean = at::empty({B, N}, x.options().dtype(adaln::acc_dtype(x)));
  auto rstd = at::empty({B, N}, mean.options());
  if (B * N == 0) return {h, out, mean, rstd};
  cpu::residual_adaln_modulate_fwd()(view(x), view(gate), view(y.contiguous()), view(shift), view(scale), eps,
                                     view(h), view(out), view(mean), view(rstd));
  return {h, out, mean, rstd};
}

// -> (dx, dgate, dy, dshift, dscale)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_backward_cpu(
    const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_out, const at::Tensor& h_in, const at::Tensor& y,
    const at::Tensor& gate, const at::Tensor& scale, const at::Tensor& mean, const at::Tensor& rstd) {
  adaln::check_residual_adaln_modulate_backward(grad_h, grad_out, h_in, y, gate, scale, mean, rstd);
  const bool has_gh = grad_h.has_value() && grad_h->defined();
  const auto h = h_in.contiguous();
  const int64_t B = h.size(0), N = h.size(1), D = h.size(2);
  const int64_t C = (N + cpu::kAdalnTokenChunk - 1) / cpu::kAdalnTokenChunk;
  auto dx = at::empty({B, N, D}, h.options());
  auto dy = at::empty({B, N, D}, h.options());
  auto dgate = at::empty({B, D}, h.options());
  auto dshift = at::empty({B, D}, h.options());
  auto dscale = at::empty({B, D}, h.options());
  if (B * D == 0) return {dx, dgate, dy, dshift, dscale};
  // partial[0] dshift, [1] dscale, [2] dgate, each (B, C, D)
  auto partial = at::empty({3, B, C, D}, h.options().dtype(adaln::acc_dtype(h)));
  const auto gh = has_gh ? grad_h->contiguous() : at::Tensor();
  cpu::residual_adaln_modulate_bwd()(view(gh), view(grad_out.contiguous()), view(h), view(y.contiguous()), view(gate),
                                     view(scale), view(mean.contiguous()), view(rstd.contiguous()), view(dx),
                                     view(dy), view(partial));
  const cpu::View outs[] = {view(dshift), view(dscale), view(dgate)};
  cpu::reduce_chunks()(view(partial), outs, 3);
  return {dx, dgate, dy, dshift, dscale};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("residual_adaln_modulate", &residual_adaln_modulate_cpu);
  m.impl("residual_adaln_modulate_backward", &residual_adaln_modulate_backward_cpu);
}

}  // namespace mdt
