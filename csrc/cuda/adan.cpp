// Torch binding of the fused CUDA Adan step (adan_kernels.h).
#include <torch/library.h>

#include <vector>

#include "adan_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/adan.h"

namespace mdt {
namespace {

// Params and grads in P, the four states in S.
template <typename P, typename S>
void adan_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
               at::TensorList exp_avg_diff, at::TensorList neg_pre_grad, const at::Tensor& clip_coef,
               const AdanHyper& hyper) {
  std::vector<AdanTensor<P, S>> tensors(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    tensors[i] = {ptr<P>(params[i]),       ptr<const P>(grads[i]),   ptr<S>(exp_avg[i]), ptr<S>(exp_avg_sq[i]),
                  ptr<S>(exp_avg_diff[i]), ptr<S>(neg_pre_grad[i]), params[i].numel()};
  }
  AdanStepArgs<P, S> a;
  a.tensors = tensors.data();
  a.num_tensors = static_cast<int64_t>(tensors.size());
  a.clip_coef = ptr<const float>(clip_coef);
  a.hyper = hyper;
  check_launch(launch_adan_step(a, current_stream()), "adan_step_ (CUDA)");
}

void adan_step_cuda_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                       at::TensorList exp_avg_diff, at::TensorList neg_pre_grad, const at::Tensor& clip_coef,
                       double lr, double beta1, double beta2, double beta3, double bias_correction1,
                       double bias_correction2, double bias_correction3_sqrt, double eps, double weight_decay,
                       bool no_prox, bool first) {
  check_adan_step(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
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
  MDT_DISPATCH_FLOATS(params[0].scalar_type(), "adan_step_", [&] {
    using P = device_t<scalar_t>;
    if (exp_avg[0].scalar_type() == at::kFloat) {
      adan_step<P, float>(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef, hyper);
    } else {  // the params' dtype (check_adan_step)
      adan_step<P, P>(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef, hyper);
    }
  });
}

}  // namespace

MDT_CUDA_IMPL(m) { m.impl("adan_step_", &adan_step_cuda_op); }

}  // namespace mdt
