// torch binding of the unmask_tokens CUDA kernels (unmask_tokens_kernels.h).
#include <torch/library.h>

#include "mdt_cuda_binding.h"
#include "ops/unmask_tokens.h"
#include "unmask_tokens_kernels.h"

namespace mdt {
namespace {

at::Tensor unmask_tokens_cuda(const at::Tensor& xk_in, const at::Tensor& ids_in, const at::Tensor& mask_in,
                              c10::SymInt num_tokens, const std::optional<at::Tensor>& pos_in) {
  const int64_t N = num_tokens.expect_int();
  check_unmask_tokens(xk_in, ids_in, mask_in, N, pos_in);
  const c10::cuda::CUDAGuard guard(xk_in.device());
  const auto xk = xk_in.contiguous(), ids = ids_in.contiguous(), mask = mask_in.contiguous();
  const auto pos = pos_in.has_value() && pos_in->defined() ? pos_in->contiguous() : at::Tensor();
  const int64_t B = xk.size(0);
  auto out = at::empty({B, N, xk.size(2)}, xk.options());
  auto inv = at::empty({B, N}, ids.options().dtype(at::kInt));
  MDT_DISPATCH_FLOATS(xk.scalar_type(), "unmask_tokens", [&] {
    using T = device_t<scalar_t>;
    UnmaskTokensArgs<T> a;
    a.x_kept = ptr<const T>(xk);
    a.ids = ptr<const int64_t>(ids);
    a.mask = ptr<const T>(mask);
    a.pos = ptr<const T>(pos);
    a.out = ptr<T>(out);
    a.inv = ptr<int32_t>(inv);
    a.B = B, a.N = N, a.K = xk.size(1), a.D = xk.size(2);
    check_launch(launch_unmask_tokens(a, current_stream()), "unmask_tokens");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unmask_tokens_backward_cuda(const at::Tensor& grad_in,
                                                                           const at::Tensor& ids_in, bool has_pos) {
  check_unmask_tokens_backward(grad_in, ids_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous(), ids = ids_in.contiguous();
  const int64_t B = grad.size(0), N = grad.size(1), D = grad.size(2), K = ids.size(1);
  auto d_xk = at::empty({B, K, D}, grad.options());
  auto d_mask = at::empty({D}, grad.options());
  auto d_pos = at::empty({has_pos ? N : 0, D}, grad.options());
  auto inv = at::empty({B, N}, ids.options().dtype(at::kInt));
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partial = at::empty({N, D}, grad.options().dtype(acc));
  MDT_DISPATCH_FLOATS(grad.scalar_type(), "unmask_tokens_backward", [&] {
    using T = device_t<scalar_t>;
    using A = typename Acc<T>::type;
    UnmaskTokensBwdArgs<T> a;
    a.grad = ptr<const T>(grad);
    a.ids = ptr<const int64_t>(ids);
    a.d_x_kept = ptr<T>(d_xk);
    a.d_mask = ptr<T>(d_mask);
    a.d_pos = has_pos ? ptr<T>(d_pos) : nullptr;
    a.inv = ptr<int32_t>(inv);
    a.mask_partial = ptr<A>(partial);
    a.B = B, a.N = N, a.K = K, a.D = D;
    check_launch(launch_unmask_tokens_backward(a, current_stream()), "unmask_tokens_backward");
  });
  return {d_xk, d_mask, d_pos};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("unmask_tokens", &unmask_tokens_cuda);
  m.impl("unmask_tokens_backward", &unmask_tokens_backward_cuda);
}

}  // namespace mdt
