// Fused multi-tensor Adan step on CUDA (kernels in adan_kernels.cu, torch binding in adan.cpp).
#pragma once
#include "launch.h"

namespace mdt {

// Hyper-parameters of one step, already folded (double so that fp64 tensors keep full precision).
struct AdanHyper {
  double beta1, beta2, beta3;
  double step_size;       // lr / (1 - beta1^t)
  double step_size_diff;  // lr * beta2 / (1 - beta2^t)
  double bias_correction3_sqrt;
  double eps;
  double decay;  // no_prox: 1 - lr*wd (multiplied); else 1 + lr*wd (divided by)
  bool no_prox;
  bool first;  // d = 0 and neg_pre_grad is not read
};

// tensors[i] = {param, grad, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad} device pointers of
// numels[i] elements each; params and grads are param_dtype, the four states state_dtype (float32 or
// param_dtype). clip_coef points to one float on the device; a non-finite value makes every block
// return without writing. Launches as few kernels as the kernel-argument tables allow, on `stream`.
cudaError_t launch_adan_step(DType param_dtype, DType state_dtype, int64_t num_tensors, void* const (*tensors)[6],
                             const int64_t* numels, const float* clip_coef, const AdanHyper& hyper,
                             cudaStream_t stream);

}  // namespace mdt
