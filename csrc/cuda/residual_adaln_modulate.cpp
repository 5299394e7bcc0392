// torch binding of the residual_adaln_modulate CUDA kernels (built only against a CUDA torch).
#include <torch/library.h>

#include <optional>

#include "ops/adaln.h"
#include "mdt_cuda_binding.h"
#include "residual_adaln_modulate_kernels.h"

namespace mdt {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_cuda(
    const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y_in, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  adaln::check_residual_adaln_modulate(x_in, gate, y_in, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto y = y_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto h = at::empty({B, N, D}, x.options());
  auto out = at::empty({B, N, D}, x.options());
  auto mean = at::empty({B, N}, x.options().dtype(adaln::acc_dtype(x)));
  auto rstd = at::empty({B, N}, mean.options());
  check_launch(launch_residual_adaln_modulate_fwd(
                   dtype_code(x), x.const_data_ptr(), gate.const_data_ptr(), y.const_data_ptr(),
                   shift.const_data_ptr(), scale.const_data_ptr(), h.data_ptr(), out.data_ptr(), mean.data_ptr(),
                   rstd.data_ptr(), B, N, D, gate.stride(0), gate.stride(1), shift.stride(0), shift.stride(1),
                   scale.stride(0), scale.stride(1), eps, current_stream()),
               "residual_adaln_modulate");
  return {h, out, mean, rstd};
}

// -> (dx, dgate, dy, dshift, dscale)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_backward_cuda(
    const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_out, const at::Tensor& h_in, const at::Tensor& y_in,
    const at::Tensor& gate, const at::Tensor& scale, const at::Tensor& mean, const at::Tensor& rstd) {
  adaln::check_residual_adaln_modulate_backward(grad_h, grad_out, h_in, y_in, gate, scale, mean, rstd);
  const bool has_gh = grad_h.has_value() && grad_h->defined();
  const c10::cuda::CUDAGuard guard(h_in.device());
  const auto h = h_in.contiguous();
  const auto y = y_in.contiguous();
  const auto g = grad_out.contiguous();
  const auto gh = has_gh ? grad_h->contiguous() : at::Tensor();
  const auto m = mean.contiguous();
  const auto r = rstd.contiguous();
  const int64_t B = h.size(0), N = h.size(1), D = h.size(2);
  auto dx = at::empty({B, N, D}, h.options());
  auto dy = at::empty({B, N, D}, h.options());
  auto dgate = at::empty({B, D}, h.options());
  auto dshift = at::empty({B, D}, h.options());
  auto dscale = at::empty({B, D}, h.options());
  auto work = at::empty({residual_adaln_modulate_bwd_workspace(B, N, D)}, h.options().dtype(adaln::acc_dtype(h)));
  check_launch(launch_residual_adaln_modulate_bwd(
                   dtype_code(h), has_gh ? gh.const_data_ptr() : nullptr, g.const_data_ptr(), h.const_data_ptr(),
                   y.const_data_ptr(), gate.const_data_ptr(), scale.const_data_ptr(), m.const_data_ptr(),
                   r.const_data_ptr(), dx.data_ptr(), dgate.data_ptr(), dy.data_ptr(), dshift.data_ptr(),
                   dscale.data_ptr(), work.data_ptr(), B, N, D, gate.stride(0), gate.stride(1), scale.stride(0),
                   scale.stride(1), current_stream()),
               "residual_adaln_modulate_backward");
  return {dx, dgate, dy, dshift, dscale};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("residual_adaln_modulate", &residual_adaln_modulate_cuda);
  m.impl("residual_adaln_modulate_backward", &residual_adaln_modulate_backward_cuda);
}

}  // namespace mdt
