// torch binding of the adaLN family's CUDA kernels (adaln_kernels.h). Each op is the family's forward or
// backward with the parts it runs: gated_residual the residual part, adaln_modulate the modulate part,
// residual_adaln_modulate both.
#include <torch/library.h>

#include <optional>

#include "adaln_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/adaln.h"

namespace mdt {
namespace {

template <typename T>
ModRows<T> mod_rows(const at::Tensor& t) {
  return t.defined() ? ModRows<T>{ptr<const T>(t), t.stride(0), t.stride(1)} : ModRows<T>{};
}

// The parts whose inputs are defined: residual (gate, y), modulate (shift, scale). x and y contiguous.
adaln::Forward forward(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
                       const at::Tensor& scale, double eps, const char* op) {
  const bool residual = gate.defined(), modulate = scale.defined();
  auto r = adaln::forward_outputs(x, residual, modulate);
  MDT_DISPATCH_FLOATS(x.scalar_type(), "adaln_forward", [&] {
    using T = device_t<scalar_t>;
    using A = typename Acc<T>::type;
    AdalnFwdArgs<T> a;
    a.x = ptr<const T>(x);
    a.gate = mod_rows<T>(gate);
    a.y = ptr<const T>(y);
    a.shift = mod_rows<T>(shift);
    a.scale = mod_rows<T>(scale);
    a.h = ptr<T>(r.h);
    a.out = ptr<T>(r.out);
    a.mean = ptr<A>(r.mean);
    a.rstd = ptr<A>(r.rstd);
    a.B = x.size(0), a.N = x.size(1), a.D = x.size(2), a.eps = eps;
    check_launch(launch_adaln_fwd(a, current_stream()), op);
  });
  return r;
}

// The gradients of the parts whose inputs are defined: modulate (x, scale, mean, rstd; gh with the
// residual part), residual (gate, y). All token tensors contiguous.
adaln::Backward backward(const at::Tensor& g, const at::Tensor& gh, const at::Tensor& x, const at::Tensor& scale,
                         const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gate, const at::Tensor& y,
                         const char* op) {
  const bool residual = gate.defined(), modulate = scale.defined();
  const int64_t B = g.size(0), N = g.size(1), D = g.size(2);
  auto r = adaln::backward_outputs(g, residual, modulate);
  const int64_t planes = (modulate ? 2 : 0) + (residual ? 1 : 0);
  auto work = at::empty({adaln_bwd_workspace(B, N, D, planes)}, g.options().dtype(adaln::acc_dtype(g)));
  MDT_DISPATCH_FLOATS(g.scalar_type(), "adaln_backward", [&] {
    using T = device_t<scalar_t>;
    using A = typename Acc<T>::type;
    AdalnBwdArgs<T> a;
    a.g = ptr<const T>(g);
    a.gh = ptr<const T>(gh);
    a.x = ptr<const T>(x);
    a.scale = mod_rows<T>(scale);
    a.mean = ptr<const A>(mean);
    a.rstd = ptr<const A>(rstd);
    a.gate = mod_rows<T>(gate);
    a.y = ptr<const T>(y);
    a.dx = ptr<T>(r.dx);
    a.dy = ptr<T>(r.dy);
    a.dshift = ptr<T>(r.dshift);
    a.dscale = ptr<T>(r.dscale);
    a.dgate = ptr<T>(r.dgate);
    a.workspace = ptr<A>(work);
    a.B = B, a.N = N, a.D = D;
    check_launch(launch_adaln_bwd(a, current_stream()), op);
  });
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cuda(const at::Tensor& x, const at::Tensor& shift,
                                                                   const at::Tensor& scale, double eps) {
  adaln::check_adaln_modulate(x, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const c10::cuda::CUDAGuard guard(x.device());
  auto r = forward(x.contiguous(), {}, {}, shift, scale, eps, "adaln_modulate");
  return {r.out, r.mean, r.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward_cuda(const at::Tensor& grad,
                                                                            const at::Tensor& x,
                                                                            const at::Tensor& scale,
                                                                            const at::Tensor& mean,
                                                                            const at::Tensor& rstd) {
  adaln::check_adaln_modulate_backward(grad, x, scale, mean, rstd);
  const c10::cuda::CUDAGuard guard(x.device());
  auto r = backward(grad.contiguous(), {}, x.contiguous(), scale, mean.contiguous(), rstd.contiguous(), {}, {},
                    "adaln_modulate_backward");
  return {r.dx, r.dshift, r.dscale};
}

at::Tensor gated_residual_cuda(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  adaln::check_gated_residual(x, gate, y);
  const c10::cuda::CUDAGuard guard(x.device());
  return forward(x.contiguous(), gate, y.contiguous(), {}, {}, 0.0, "gated_residual").out;
}

// -> (dgate, dy)
std::tuple<at::Tensor, at::Tensor> gated_residual_backward_cuda(const at::Tensor& grad, const at::Tensor& gate,
                                                                const at::Tensor& y) {
  adaln::check_gated_residual_backward(grad, gate, y);
  const c10::cuda::CUDAGuard guard(y.device());
  auto r = backward(grad.contiguous(), {}, {}, {}, {}, {}, gate, y.contiguous(), "gated_residual_backward");
  return {r.dgate, r.dy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_cuda(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  adaln::check_residual_adaln_modulate(x, gate, y, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const c10::cuda::CUDAGuard guard(x.device());
  auto r = forward(x.contiguous(), gate, y.contiguous(), shift, scale, eps, "residual_adaln_modulate");
  return {r.h, r.out, r.mean, r.rstd};
}

// -> (dx, dgate, dy, dshift, dscale)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_backward_cuda(
    const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& y,
    const at::Tensor& gate, const at::Tensor& scale, const at::Tensor& mean, const at::Tensor& rstd) {
  adaln::check_residual_adaln_modulate_backward(grad_h, grad_out, h, y, gate, scale, mean, rstd);
  const c10::cuda::CUDAGuard guard(h.device());
  const auto gh = grad_h.has_value() && grad_h->defined() ? grad_h->contiguous() : at::Tensor();
  auto r = backward(grad_out.contiguous(), gh, h.contiguous(), scale, mean.contiguous(), rstd.contiguous(), gate,
                    y.contiguous(), "residual_adaln_modulate_backward");
  return {r.dx, r.dgate, r.dy, r.dshift, r.dscale};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("adaln_modulate", &adaln_modulate_cuda);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cuda);
  m.impl("gated_residual", &gated_residual_cuda);
  m.impl("gated_residual_backward", &gated_residual_backward_cuda);
  m.impl("residual_adaln_modulate", &residual_adaln_modulate_cuda);
  m.impl("residual_adaln_modulate_backward", &residual_adaln_modulate_backward_cuda);
}

}  // namespace mdt
