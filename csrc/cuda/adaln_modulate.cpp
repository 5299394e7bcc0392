// torch binding of the adaln_modulate CUDA kernels (built only against a CUDA torch).
#include <torch/library.h>

#include "ops/adaln.h"
#include "adaln_modulate_kernels.h"
#include "mdt_cuda_binding.h"

namespace mdt {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cuda(const at::Tensor& x_in, const at::Tensor& shift,
                                                                   const at::Tensor& scale, double eps) {
  adaln::check_adaln_modulate(x_in, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::empty({B, N, D}, x.options());
  auto mean = at::empty({B, N}, x.options().dtype(adaln::acc_dtype(x)));
  auto rstd = at::empty({B, N}, mean.options());
  check_launch(launch_adaln_modulate_fwd(dtype_code(x), x.const_data_ptr(), shift.const_data_ptr(),
                                         scale.const_data_ptr(), out.data_ptr(), mean.data_ptr(), rstd.data_ptr(), B,
                                         N, D, shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1), eps,
                                         current_stream()),
               "adaln_modulate");
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward_cuda(const at::Tensor& grad,
                                                                            const at::Tensor& x_in,
                                                                            const at::Tensor& scale,
                                                                            const at::Tensor& mean,
                                                                            const at::Tensor& rstd) {
  adaln::check_adaln_modulate_backward(grad, x_in, scale, mean, rstd);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto g = grad.contiguous();
  const auto m = mean.contiguous();
  const auto r = rstd.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto dx = at::empty({B, N, D}, x.options());
  auto dshift = at::empty({B, D}, x.options());
  auto dscale = at::empty({B, D}, x.options());
  auto work = at::empty({adaln_modulate_bwd_workspace(B, N, D)}, x.options().dtype(adaln::acc_dtype(x)));
  check_launch(launch_adaln_modulate_bwd(dtype_code(x), g.const_data_ptr(), x.const_data_ptr(),
                                         scale.const_data_ptr(), m.const_data_ptr(), r.const_data_ptr(), dx.data_ptr(),
                                         dshift.data_ptr(), dscale.data_ptr(), work.data_ptr(), B, N, D,
                                         scale.stride(0), scale.stride(1), current_stream()),
               "adaln_modulate_backward");
  return {dx, dshift, dscale};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("adaln_modulate", &adaln_modulate_cuda);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cuda);
}

}  // namespace mdt
