// torch binding of the unmask_tokens CUDA kernels (built only against a CUDA torch).
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
  const bool has_pos = pos_in.has_value() && pos_in->defined();
  const auto xk = xk_in.contiguous();
  const auto ids = ids_in.contiguous();
  const auto mask = mask_in.contiguous();
  const auto pos = has_pos ? pos_in->contiguous() : at::Tensor();
  const int64_t B = xk.size(0), K = xk.size(1), D = xk.size(2);
  auto out = at::empty({B, N, D}, xk.options());
  auto inv = at::empty({B, N}, ids.options().dtype(at::kInt));
  check_launch(launch_unmask_tokens(xk.const_data_ptr(), ids.const_data_ptr<int64_t>(), mask.const_data_ptr(),
                                    has_pos ? pos.const_data_ptr() : nullptr, out.data_ptr(), inv.data_ptr<int32_t>(),
                                    B, N, K, D, dtype_code(xk), current_stream()),
               "unmask_tokens");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unmask_tokens_backward_cuda(const at::Tensor& grad_in,
                                                                           const at::Tensor& ids_in, bool has_pos) {
  check_unmask_tokens_backward(grad_in, ids_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = grad.size(0), N = grad.size(1), D = grad.size(2), K = ids.size(1);
  auto d_xk = at::empty({B, K, D}, grad.options());
  auto d_mask = at::empty({D}, grad.options());
  auto d_pos = at::empty({has_pos ? N : 0, D}, grad.options());
  auto inv = at::empty({B, N}, ids.options().dtype(at::kInt));
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto partial = at::empty({N, D}, grad.options().dtype(acc));
  check_launch(launch_unmask_tokens_backward(grad.const_data_ptr(), ids.const_data_ptr<int64_t>(), d_xk.data_ptr(),
                                             d_mask.data_ptr(), has_pos ? d_pos.data_ptr() : nullptr,
                                             inv.data_ptr<int32_t>(), partial.data_ptr(), B, N, K, D,
                                             dtype_code(grad), current_stream()),
               "unmask_tokens_backward");
  return {d_xk, d_mask, d_pos};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("unmask_tokens", &unmask_tokens_cuda);
  m.impl("unmask_tokens_backward", &unmask_tokens_backward_cuda);
}

}  // namespace mdt
