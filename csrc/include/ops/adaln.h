// Input checks of the adaLN ops (adaln_modulate, gated_residual, residual_adaln_modulate), shared by the
// CPU kernels and the CUDA bindings. The Python wrappers check first with the same meaning; these keep
// a direct torch.ops.mdt_kernels.* call (or a compiled graph) from reading out of bounds.
#pragma once
#include <ATen/ATen.h>

#include "mdt_checks.h"

namespace mdt {
namespace adaln {

// Statistics and partial sums: fp32 for fp32/fp16/bf16 tensors, fp64 for fp64.
inline at::ScalarType acc_dtype(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Checks for x (B,N,D) and a (B,D) modulation tensor (shift, scale or gate).
inline void check_tokens(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 3, name, " must be 3-D (B, N, D), got shape ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, name,
                   " must be float32, float16, bfloat16 or float64, got ", dt);
}

inline void check_mod(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(2), name,
                    " must have shape (B, D) = (", x.size(0), ", ", x.size(2), "), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
}

inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
}

// Per-row statistics saved by the forward: (B,N) in acc_t.
inline void check_stats(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(1), name,
                    " must have shape (B, N) = (", x.size(0), ", ", x.size(1), "), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == acc_dtype(x), name, " must be ", acc_dtype(x), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
}

}  // namespace adaln
}  // namespace mdt
