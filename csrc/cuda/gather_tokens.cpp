// torch binding of the gather_tokens CUDA kernels (built only against a CUDA torch).
#include <torch/library.h>

#include "gather_tokens_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/gather_tokens.h"

namespace mdt {
namespace {

at::Tensor gather_tokens_cuda(const at::Tensor& x_in, const at::Tensor& ids_in) {
  check_gather_tokens(x_in, ids_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), K = ids.size(1);
  auto out = at::empty({B, K, D}, x.options());
  check_launch(launch_gather_tokens(x.const_data_ptr(), ids.const_data_ptr<int64_t>(), out.data_ptr(), B, N, K,
                                    D * x.element_size(), current_stream()),
               "gather_tokens");
  return out;
}

at::Tensor gather_tokens_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in, c10::SymInt num_tokens) {
  check_gather_tokens_backward(grad_in, ids_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = grad.size(0), K = grad.size(1), D = grad.size(2), N = num_tokens.expect_int();
  auto dx = at::empty({B, N, D}, grad.options());
  check_launch(launch_gather_tokens_backward(grad.const_data_ptr(), ids.const_data_ptr<int64_t>(), dx.data_ptr(), B,
                                             N, K, D, dtype_code(grad), current_stream()),
               "gather_tokens_backward");
  return dx;
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("gather_tokens", &gather_tokens_cuda);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cuda);
}

}  // namespace mdt
