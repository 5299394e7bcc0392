// torch binding of the masked_rel_pos_bias CUDA kernels (masked_rel_pos_bias_kernels.h).
#include <torch/library.h>

#include "masked_rel_pos_bias_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/masked_rel_pos_bias.h"

namespace mdt {
namespace {

at::Tensor masked_rel_pos_bias_cuda(const at::Tensor& table_in, int64_t grid_size, const at::Tensor& ids_in) {
  check_masked_rel_pos_bias(table_in, grid_size, ids_in);
  const c10::cuda::CUDAGuard guard(table_in.device());
  const auto table = table_in.contiguous(), ids = ids_in.contiguous();
  const int64_t B = ids.size(0), K = ids.size(1), H = table.size(1);
  auto out = at::empty({B, H, K, K}, table.options());
  MDT_DISPATCH_FLOATS(table.scalar_type(), "masked_rel_pos_bias", [&] {
    using T = device_t<scalar_t>;
    MaskedRelPosBiasArgs<T> a;
    a.table = ptr<const T>(table);
    a.ids = ptr<const int64_t>(ids);
    a.out = ptr<T>(out);
    a.B = B, a.H = H, a.K = K, a.G = grid_size;
    check_launch(launch_masked_rel_pos_bias(a, current_stream()), "masked_rel_pos_bias");
  });
  return out;
}

at::Tensor masked_rel_pos_bias_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in, int64_t grid_size,
                                             c10::SymInt num_rel) {
  const int64_t R = num_rel.expect_int();
  check_masked_rel_pos_bias_backward(grad_in, ids_in, grid_size, R);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous(), ids = ids_in.contiguous();
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto d_table = at::empty({R, grad.size(1)}, grad.options().dtype(acc));
  MDT_DISPATCH_FLOATS(grad.scalar_type(), "masked_rel_pos_bias_backward", [&] {
    using T = device_t<scalar_t>;
    using A = typename Acc<T>::type;
    MaskedRelPosBiasBwdArgs<T> a;
    a.grad = ptr<const T>(grad);
    a.ids = ptr<const int64_t>(ids);
    a.d_table_acc = ptr<A>(d_table);
    a.B = grad.size(0), a.H = grad.size(1), a.K = grad.size(2), a.G = grid_size, a.R = R;
    check_launch(launch_masked_rel_pos_bias_backward(a, current_stream()), "masked_rel_pos_bias_backward");
  });
  return d_table.to(grad.scalar_type());
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("masked_rel_pos_bias", &masked_rel_pos_bias_cuda);
  m.impl("masked_rel_pos_bias_backward", &masked_rel_pos_bias_backward_cuda);
}

}  // namespace mdt
