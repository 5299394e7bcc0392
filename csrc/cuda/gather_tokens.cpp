// torch binding of the gather_tokens CUDA kernels (gather_tokens_kernels.h).
#include <torch/library.h>

#include "gather_tokens_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/gather_tokens.h"

namespace mdt {
namespace {

at::Tensor gather_tokens_cuda(const at::Tensor& x_in, const at::Tensor& ids_in) {
  check_gather_tokens(x_in, ids_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), ids = ids_in.contiguous();
  auto out = at::empty({x.size(0), ids.size(1), x.size(2)}, x.options());
  MDT_DISPATCH_FLOATS(x.scalar_type(), "gather_tokens", [&] {
    using T = device_t<scalar_t>;
    GatherTokensArgs<T> a;
    a.x = ptr<const T>(x);
    a.ids = ptr<const int64_t>(ids);
    a.out = ptr<T>(out);
    a.B = x.size(0), a.N = x.size(1), a.K = ids.size(1), a.D = x.size(2);
    check_launch(launch_gather_tokens(a, current_stream()), "gather_tokens");
  });
  return out;
}

at::Tensor gather_tokens_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in, c10::SymInt num_tokens) {
  check_gather_tokens_backward(grad_in, ids_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous(), ids = ids_in.contiguous();
  const int64_t N = num_tokens.expect_int();
  auto dx = at::empty({grad.size(0), N, grad.size(2)}, grad.options());
  MDT_DISPATCH_FLOATS(grad.scalar_type(), "gather_tokens_backward", [&] {
    using T = device_t<scalar_t>;
    GatherTokensBwdArgs<T> a;
    a.grad = ptr<const T>(grad);
    a.ids = ptr<const int64_t>(ids);
    a.dx = ptr<T>(dx);
    a.B = grad.size(0), a.N = N, a.K = grad.size(1), a.D = grad.size(2);
    check_launch(launch_gather_tokens_backward(a, current_stream()), "gather_tokens_backward");
  });
  return dx;
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("gather_tokens", &gather_tokens_cuda);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cuda);
}

}  // namespace mdt
