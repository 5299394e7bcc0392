// Torch binding of the fused CUDA Adan step (kernels in adan_kernels.cu). Built only with a CUDA torch.
#include <torch/library.h>

#include <array>
#include <vector>

#include "adan_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/adan.h"

namespace mdt {
namespace {

#if defined(MDT_SIMT)
constexpr c10::DeviceType kKernelDevice = c10::kCPU;  // on the host execution layer csrc/simt (cuda_sim)
#else
constexpr c10::DeviceType kKernelDevice = c10::kCUDA;
#endif

void adan_step_cuda_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                       at::TensorList exp_avg_diff, at::TensorList neg_pre_grad, const at::Tensor& clip_coef,
                       double lr, double beta1, double beta2, double beta3, double bias_correction1,
                       double bias_correction2, double bias_correction3_sqrt, double eps, double weight_decay,
                       bool no_prox, bool first) {
  check_adan_step(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef, kKernelDevice);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<std::array<void*, 6>> ptrs(params.size());
  std::vector<int64_t> numels(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    ptrs[i] = {params[i].data_ptr(), const_cast<void*>(grads[i].const_data_ptr()), exp_avg[i].data_ptr(),
               exp_avg_sq[i].data_ptr(), exp_avg_diff[i].data_ptr(), neg_pre_grad[i].data_ptr()};
    numels[i] = params[i].numel();
  }
  const AdanHyper hyper{beta1,
                        beta2,
                        beta3,
                        lr / bias_correction1,
                        lr * beta2 / bias_correction2,
                        bias_correction3_sqrt,
                        eps,
                        no_prox ? 1.0 - lr * weight_decay : 1.0 + lr * weight_decay,
                        no_prox,
                        first};
  static_assert(sizeof(std::array<void*, 6>) == sizeof(void* [6]), "pointer rows must be packed");
  check_launch(launch_adan_step(dtype_code(params[0]), dtype_code(exp_avg[0]), static_cast<int64_t>(ptrs.size()),
                                reinterpret_cast<void* const(*)[6]>(ptrs.data()), numels.data(),
                                clip_coef.const_data_ptr<float>(), hyper, current_stream()),
               "adan_step_ (CUDA)");
}

}  // namespace

MDT_CUDA_IMPL(m) { m.impl("adan_step_", &adan_step_cuda_op); }

}  // namespace mdt
