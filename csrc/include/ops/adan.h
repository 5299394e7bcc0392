// Input checks of the fused Adan step (adan_step_), shared by the CPU and CUDA bindings. The kernels
// address every tensor as flat memory, so all six tensors of a parameter must share its dense layout.
#pragma once
#include "mdt_checks.h"

namespace mdt {

// Same element order in flat memory: equal strides on every dimension of size > 1. A size-1 dimension's
// stride is never used to address an element, and autograd or inductor may hand back a gradient whose
// size-1 strides differ from the parameter's (a (D, 1, p, p) conv weight, a (1, N, D) embedding).
inline bool same_dense_order(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

inline void check_adan_list(const at::TensorList& list, const at::TensorList& params, const char* name) {
  TORCH_CHECK_VALUE(list.size() == params.size(), name, " has ", list.size(), " tensors but params has ",
                    params.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const at::Tensor &t = list[i], &p = params[i];
    TORCH_CHECK_VALUE(t.device() == p.device(), name, "[", i, "] is on ", t.device(), " but params[", i, "] on ",
                      p.device());
    TORCH_CHECK_VALUE(t.sizes() == p.sizes(), name, "[", i, "] has shape ", t.sizes(), " but params[", i, "] has ",
                      p.sizes());
    TORCH_CHECK_VALUE(t.numel() <= 1 || (t.is_non_overlapping_and_dense() && same_dense_order(t, p)), name,
                      "[", i, "] must be dense with the strides of params[", i, "] on every dimension of size > 1");
    TORCH_CHECK_TYPE(t.scalar_type() == list[0].scalar_type(), name, "[", i, "] is ", t.scalar_type(), " but ",
                     name, "[0] is ", list[0].scalar_type(), "; one call takes one dtype per list");
  }
}

// Checks everything the kernels rely on: one device (the dispatcher picked the kernel of its type), one dense
// layout per parameter, the dtypes the kernels are instantiated for.
inline void check_adan_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avg,
                            at::TensorList exp_avg_sq, at::TensorList exp_avg_diff, at::TensorList neg_pre_grad,
                            const at::Tensor& clip_coef) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.device() == params[0].device(), "params[", i, "] is on ", p.device(), " but params[0] on ",
                      params[0].device());
    MDT_CHECK_FLOAT(p);
    TORCH_CHECK_VALUE(p.numel() <= 1 || p.is_non_overlapping_and_dense(), "params[", i,
                      "] must be dense (contiguous or a permutation of contiguous)");
  }
  check_adan_list(params, params, "params");
  check_adan_list(grads, params, "grads");
  check_adan_list(exp_avg, params, "exp_avg");
  check_adan_list(exp_avg_sq, params, "exp_avg_sq");
  check_adan_list(exp_avg_diff, params, "exp_avg_diff");
  check_adan_list(neg_pre_grad, params, "neg_pre_grad");
  TORCH_CHECK_VALUE(clip_coef.numel() == 1 && clip_coef.scalar_type() == at::kFloat, "clip_coef must be a one-element",
                    " float32 tensor, got ", clip_coef.scalar_type(), " of shape ", clip_coef.sizes());
  if (params.empty()) return;
  TORCH_CHECK_VALUE(clip_coef.device() == params[0].device(), "clip_coef is on ", clip_coef.device(),
                    " but params on ", params[0].device());
  const auto p_type = params[0].scalar_type(), s_type = exp_avg[0].scalar_type();
  TORCH_CHECK_TYPE(grads[0].scalar_type() == p_type, "grads are ", grads[0].scalar_type(), " but params are ",
                   p_type);
  for (const auto* l : {&exp_avg_sq, &exp_avg_diff, &neg_pre_grad})
    TORCH_CHECK_TYPE((*l)[0].scalar_type() == s_type, "all four states must share one dtype, got ", s_type, " and ",
                     (*l)[0].scalar_type());
  TORCH_CHECK_TYPE(s_type == at::kFloat || s_type == p_type, "states must be float32 or the params' dtype (", p_type,
                   "), got ", s_type);
}

}  // namespace mdt
