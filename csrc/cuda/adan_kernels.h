// Fused multi-tensor Adan step on CUDA (kernels in adan_kernels.cu, torch binding in adan.cpp).
#pragma once
#include "common.cuh"

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

// One tensor of the step: param and grad in P, the four states in S (float32 or P), numel elements each.
template <typename P, typename S>
struct AdanTensor {
  P* param = nullptr;
  const P* grad = nullptr;
  S* exp_avg = nullptr;
  S* exp_avg_sq = nullptr;
  S* exp_avg_diff = nullptr;
  S* neg_pre_grad = nullptr;
  int64_t numel = 0;
};

// clip_coef points to one float on the device; a non-finite value makes every block return without
// writing. The launcher uses as few kernels as the kernel-argument tables allow.
template <typename P, typename S>
struct AdanStepArgs {
  const AdanTensor<P, S>* tensors = nullptr;  // host array
  int64_t num_tensors = 0;
  const float* clip_coef = nullptr;
  AdanHyper hyper{};
};

template <typename P, typename S>
cudaError_t launch_adan_step(const AdanStepArgs<P, S>& args, cudaStream_t stream);

}  // namespace mdt
