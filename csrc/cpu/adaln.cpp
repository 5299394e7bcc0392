// The adaLN family on CPU: adaln_modulate, gated_residual and residual_adaln_modulate, one computation in
// two parts (vec/adaln.h) of which each op runs one or both, in one pass over the rows:
//   gated_residual:           out = x + gate[b] * y
//   adaln_modulate:           out = LayerNorm_no_affine(x) * (1 + scale[b]) + shift[b]
//   residual_adaln_modulate:  h = x + gate[b] * y, out = adaln_modulate(h); the statistics are taken from
//                             h as stored (rounded to its dtype), so the result equals the two ops in turn.
// The per-row mean and rstd (acc_t, (B,N)) are returned for the backward; the inference forms
// (adaln_modulate_inference, residual_adaln_modulate_inference, for sampling under no_grad) keep none.
//
// Backward, with g = dout, gh = dh from the residual stream (may be absent), hhat = (h - mean) * rstd,
// a = 1 + scale[b]:
//   dshift[b] = sum_n g,  dscale[b] = sum_n g * hhat,
//   dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a * hhat)) + gh   (dh = g for gated_residual),
//   dx = dh (gated_residual: returned by the Python autograd rule, no copy),  dy = gate[b] * dh,
//   dgate[b] = sum_n dh * y.
// One task per (sample, token chunk); the per-sample sums are chunk partials added in chunk order
// (deterministic for any thread count).
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/adaln.h"
#include "tensor_view.h"
#include "vec/adaln.h"

namespace mdt {
namespace {

using cpu::view;

// The parts whose inputs are defined: residual (gate, y), modulate (shift, scale). x and y contiguous.
adaln::Forward forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
                       const at::Tensor& scale, double eps, bool keep_stats = true) {
  const bool residual = gate.defined(), modulate = scale.defined();
  auto r = adaln::forward_outputs(x, residual, modulate, keep_stats);
  if (x.size(0) * x.size(1) == 0) return r;
  cpu::adaln_fwd()({.x = view(x), .gate = view(gate), .y = view(y), .shift = view(shift), .scale = view(scale),
                     .eps = eps, .h = view(r.h), .out = view(r.out), .mean = view(r.mean), .rstd = view(r.rstd)});
  return r;
}

// The gradients of the parts whose inputs are defined: modulate (x, scale, mean, rstd; gh with the
// residual part), residual (gate, y). All token tensors and the statistics contiguous.
adaln::Backward backward(const at::Tensor& g, const at::Tensor& gh, const at::Tensor& x, const at::Tensor& scale,
                         const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gate, const at::Tensor& y) {
  const bool residual = gate.defined(), modulate = scale.defined();
  const int64_t B = g.size(0), N = g.size(1), D = g.size(2);
  auto r = adaln::backward_outputs(g, residual, modulate);
  if (B * D == 0) return r;
  // The per-sample sums as chunk partials (P, B, C, D), P = dshift, dscale (modulate), dgate (residual).
  const int64_t planes = (modulate ? 2 : 0) + (residual ? 1 : 0);
  const int64_t C = (N + cpu::kAdalnTokenChunk - 1) / cpu::kAdalnTokenChunk;
  const auto partial = at::empty({planes, B, C, D}, g.options().dtype(adaln::acc_dtype(g)));
  cpu::adaln_bwd()({.g = view(g), .gh = view(gh), .x = view(x), .scale = view(scale), .mean = view(mean),
                     .rstd = view(rstd), .gate = view(gate), .y = view(y), .dx = view(r.dx), .dy = view(r.dy),
                     .partial = view(partial)});
  std::vector<cpu::View> sums;
  for (const auto* t : {&r.dshift, &r.dscale, &r.dgate})
    if (t->defined()) sums.push_back(view(*t));
  cpu::reduce_chunks()(view(partial), sums.data(), planes);
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cpu(const at::Tensor& x, const at::Tensor& shift,
                                                                  const at::Tensor& scale, double eps) {
  adaln::check_adaln_modulate(x, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  auto r = forward(x.contiguous(), {}, {}, shift, scale, eps);
  return {r.out, r.mean, r.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward_cpu(const at::Tensor& grad,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& scale,
                                                                           const at::Tensor& mean,
                                                                           const at::Tensor& rstd) {
  adaln::check_adaln_modulate_backward(grad, x, scale, mean, rstd);
  auto r = backward(grad.contiguous(), {}, x.contiguous(), scale, mean.contiguous(), rstd.contiguous(), {}, {});
  return {r.dx, r.dshift, r.dscale};
}

at::Tensor adaln_modulate_inference_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale,
                                        double eps) {
  adaln::check_adaln_modulate(x, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  return forward(x.contiguous(), {}, {}, shift, scale, eps, /*keep_stats=*/false).out;
}

at::Tensor gated_residual_cpu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  adaln::check_gated_residual(x, gate, y);
  return forward(x.contiguous(), gate, y.contiguous(), {}, {}, 0.0).out;
}

// -> (dgate, dy)
std::tuple<at::Tensor, at::Tensor> gated_residual_backward_cpu(const at::Tensor& grad, const at::Tensor& gate,
                                                               const at::Tensor& y) {
  adaln::check_gated_residual_backward(grad, gate, y);
  auto r = backward(grad.contiguous(), {}, {}, {}, {}, {}, gate, y.contiguous());
  return {r.dgate, r.dy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_cpu(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  adaln::check_residual_adaln_modulate(x, gate, y, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  auto r = forward(x.contiguous(), gate, y.contiguous(), shift, scale, eps);
  return {r.h, r.out, r.mean, r.rstd};
}

// -> (h, out)
std::tuple<at::Tensor, at::Tensor> residual_adaln_modulate_inference_cpu(const at::Tensor& x, const at::Tensor& gate,
                                                                         const at::Tensor& y, const at::Tensor& shift,
                                                                         const at::Tensor& scale, double eps) {
  adaln::check_residual_adaln_modulate(x, gate, y, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  auto r = forward(x.contiguous(), gate, y.contiguous(), shift, scale, eps, /*keep_stats=*/false);
  return {r.h, r.out};
}

// -> (dx, dgate, dy, dshift, dscale)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_backward_cpu(
    const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& y,
    const at::Tensor& gate, const at::Tensor& scale, const at::Tensor& mean, const at::Tensor& rstd) {
  adaln::check_residual_adaln_modulate_backward(grad_h, grad_out, h, y, gate, scale, mean, rstd);
  const auto gh = grad_h.has_value() && grad_h->defined() ? grad_h->contiguous() : at::Tensor();
  auto r = backward(grad_out.contiguous(), gh, h.contiguous(), scale, mean.contiguous(), rstd.contiguous(), gate,
                    y.contiguous());
  return {r.dx, r.dgate, r.dy, r.dshift, r.dscale};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // out = LayerNorm_no_affine(x) * (1 + scale[:,None]) + shift[:,None]; x (B,N,D), shift/scale (B,D) any strides.
  // Also returns the per-row mean and rstd (B,N) in fp32 (fp64 for fp64 x), saved for the backward.
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor, Tensor)");
  // The same out without mean and rstd, for a forward no backward will follow (sampling; CPU).
  m.def("adaln_modulate_inference(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor");
  // -> (dx, dshift, dscale)
  m.def("adaln_modulate_backward(Tensor grad, Tensor x, Tensor scale, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)");
  // out = x + gate[:,None] * y
  m.def("gated_residual(Tensor x, Tensor gate, Tensor y) -> Tensor");
  // -> (dgate, dy); dx is grad itself
  m.def("gated_residual_backward(Tensor grad, Tensor gate, Tensor y) -> (Tensor, Tensor)");
  // -> (h, out, mean, rstd): h = x + gate[:,None] * y, out = adaln_modulate(h, shift, scale, eps)
  m.def("residual_adaln_modulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // -> (h, out) without mean and rstd, for a forward no backward will follow (sampling; CPU).
  m.def("residual_adaln_modulate_inference(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor)");
  // -> (dx, dgate, dy, dshift, dscale); grad_h may be None (h unused)
  m.def("residual_adaln_modulate_backward(Tensor? grad_h, Tensor grad_out, Tensor h, Tensor y, Tensor gate, Tensor scale, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("adaln_modulate", &adaln_modulate_cpu);
  m.impl("adaln_modulate_inference", &adaln_modulate_inference_cpu);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cpu);
  m.impl("gated_residual", &gated_residual_cpu);
  m.impl("gated_residual_backward", &gated_residual_backward_cpu);
  m.impl("residual_adaln_modulate", &residual_adaln_modulate_cpu);
  m.impl("residual_adaln_modulate_inference", &residual_adaln_modulate_inference_cpu);
  m.impl("residual_adaln_modulate_backward", &residual_adaln_modulate_backward_cpu);
}

}  // namespace mdt
