// torch binding of the gated_residual CUDA kernels (built only against a CUDA torch).
#include <torch/library.h>

#include "ops/adaln.h"
#include "gated_residual_kernels.h"
#include "mdt_cuda_binding.h"

namespace mdt {
namespace {

at::Tensor gated_residual_cuda(const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y_in) {
  adaln::check_gated_residual(x_in, gate, y_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto y = y_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::empty({B, N, D}, x.options());
  check_launch(launch_gated_residual_fwd(dtype_code(x), x.const_data_ptr(), gate.const_data_ptr(), y.const_data_ptr(),
                                         out.data_ptr(), B, N, D, gate.stride(0), gate.stride(1), current_stream()),
               "gated_residual");
  return out;
}

// -> (dgate, dy)
std::tuple<at::Tensor, at::Tensor> gated_residual_backward_cuda(const at::Tensor& grad, const at::Tensor& gate,
                                                                const at::Tensor& y_in) {
  adaln::check_gated_residual_backward(grad, gate, y_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto y = y_in.contiguous();
  const auto g = grad.contiguous();
  const int64_t B = y.size(0), N = y.size(1), D = y.size(2);
  auto dy = at::empty({B, N, D}, y.options());
  auto dgate = at::empty({B, D}, y.options());
  auto work = at::empty({gated_residual_bwd_workspace(B, N, D)}, y.options().dtype(adaln::acc_dtype(y)));
  check_launch(launch_gated_residual_bwd(dtype_code(y), g.const_data_ptr(), gate.const_data_ptr(), y.const_data_ptr(),
                                         dy.data_ptr(), dgate.data_ptr(), work.data_ptr(), B, N, D, gate.stride(0),
                                         gate.stride(1), current_stream()),
               "gated_residual_backward");
  return {dgate, dy};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("gated_residual", &gated_residual_cuda);
  m.impl("gated_residual_backward", &gated_residual_backward_cuda);
}

}  // namespace mdt
