// torch binding of the masked_rel_pos_bias CUDA kernels (built only against a CUDA torch).
#include <torch/library.h>

#include "masked_rel_pos_bias_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/masked_rel_pos_bias.h"

namespace mdt {
namespace {

at::Tensor masked_rel_pos_bias_cuda(const at::Tensor& table_in, int64_t grid_size, const at::Tensor& ids_in) {
  check_masked_rel_pos_bias(table_in, grid_size, ids_in);
  const c10::cuda::CUDAGuard guard(table_in.device());
  const auto table = table_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = ids.size(0), K = ids.size(1), H = table.size(1);
  auto out = at::empty({B, H, K, K}, table.options());
  check_launch(launch_masked_rel_pos_bias(table.const_data_ptr(), ids.const_data_ptr<int64_t>(), out.data_ptr(), B, H,
                                          K, grid_size, dtype_code(table), current_stream()),
               "masked_rel_pos_bias");
  return out;
}

at::Tensor masked_rel_pos_bias_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in, int64_t grid_size,
                                             c10::SymInt num_rel) {
  const int64_t R = num_rel.expect_int();
  check_masked_rel_pos_bias_backward(grad_in, ids_in, grid_size, R);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = grad.size(0), H = grad.size(1), K = grad.size(2);
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto d_table = at::empty({R, H}, grad.options().dtype(acc));
  check_launch(launch_masked_rel_pos_bias_backward(grad.const_data_ptr(), ids.const_data_ptr<int64_t>(),
                                                   d_table.data_ptr(), B, H, K, grid_size, R, dtype_code(grad),
                                                   current_stream()),
               "masked_rel_pos_bias_backward");
  return d_table.to(grad.scalar_type());
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("masked_rel_pos_bias", &masked_rel_pos_bias_cuda);
  m.impl("masked_rel_pos_bias_backward", &masked_rel_pos_bias_backward_cuda);
}

}  // namespace mdt
