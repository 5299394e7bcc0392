// adaln_modulate on CPU: out = LayerNorm_no_affine(x) * (1 + scale[b]) + shift[b], one read of x and
// one write of out per element (mean/var from the row while it is in cache). The per-row mean and
// rstd (acc_t, (B,N)) are returned for the backward.
//
// Backward, with xhat = (x - mean) * rstd, a = 1 + scale[b], g = dout:
//   dshift[b] = sum_n g,  dscale[b] = sum_n g * xhat,
//   dx = rstd * (g*a - mean_d(g*a) - xhat * mean_d(g*a * xhat)).
// One task per (sample, token chunk): the first pass over a row gives the two row means and the
// chunk's dshift/dscale partials, the second (cached) pass writes dx. Reads x and dout, writes dx.
#include <torch/library.h>

#include "ops/adaln.h"
#include "tensor_view.h"
#include "vec/adaln.h"

namespace mdt {
namespace {

using cpu::view;

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cpu(const at::Tensor& x_in, const at::Tensor& shift,
                                                                  const at::Tensor& scale, double eps) {
  adaln::check_adaln_modulate(x_in, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::empty({B, N, D}, x.options());
  auto mean = at::empty({B, N}, x.options().dtype(adaln::acc_dtype(x)));
  auto rstd = at::empty({B, N}, mean.options());
  if (B * N == 0) return {out, mean, rstd};
  cpu::adaln_modulate_fwd()(view(x), view(shift), view(scale), eps, view(out), view(mean), view(rstd));
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward_cpu(const at::Tensor& grad,
                                                                           const at::Tensor& x_in,
                                                                           const at::Tensor& scale,
                                                                           const at::Tensor& mean,
                                                                           const at::Tensor& rstd) {
  adaln::check_adaln_modulate_backward(grad, x_in, scale, mean, rstd);
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const int64_t C = (N + cpu::kAdalnTokenChunk - 1) / cpu::kAdalnTokenChunk;
  auto dx = at::empty({B, N, D}, x.options());
  auto dshift = at::empty({B, D}, x.options());
  auto dscale = at::empty({B, D}, x.options());
  if (B * D == 0) return {dx, dshift, dscale};
  // partial[0] for dshift, partial[1] for dscale, each (B, C, D)
  auto partial = at::empty({2, B, C, D}, x.options().dtype(adaln::acc_dtype(x)));
  cpu::adaln_modulate_bwd()(view(grad.contiguous()), view(x), view(scale), view(mean.contiguous()),
                            view(rstd.contiguous()), view(dx), view(partial));
  const cpu::View outs[] = {view(dshift), view(dscale)};
  cpu::reduce_chunks()(view(partial), outs, 2);
  return {dx, dshift, dscale};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("adaln_modulate", &adaln_modulate_cpu);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cpu);
}

}  // namespace mdt
