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

// Per-op input checks, shared by the CPU and CUDA bindings.
inline void check_adaln_modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  check_tokens(x, "x");
  check_mod(shift, x, "shift");
  check_mod(scale, x, "scale");
}

// The modulate part's backward inputs: the normalised tokens x, their gradient, scale and the statistics.
inline void check_modulate_backward(const at::Tensor& grad, const char* grad_name, const at::Tensor& x,
                                    const char* x_name, const at::Tensor& scale, const at::Tensor& mean,
                                    const at::Tensor& rstd) {
  check_tokens(x, x_name);
  check_like(grad, x, grad_name);
  check_mod(scale, x, "scale");
  check_stats(mean, x, "mean");
  check_stats(rstd, x, "rstd");
}

inline void check_adaln_modulate_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
                                          const at::Tensor& mean, const at::Tensor& rstd) {
  check_modulate_backward(grad, "grad", x, "x", scale, mean, rstd);
}

inline void check_gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  check_tokens(x, "x");
  check_mod(gate, x, "gate");
  check_like(y, x, "y");
}

inline void check_gated_residual_backward(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& y) {
  check_tokens(y, "y");
  check_like(grad, y, "grad");
  check_mod(gate, y, "gate");
}

inline void check_residual_adaln_modulate(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y,
                                          const at::Tensor& shift, const at::Tensor& scale) {
  check_gated_residual(x, gate, y);
  check_mod(shift, x, "shift");
  check_mod(scale, x, "scale");
}

inline void check_residual_adaln_modulate_backward(const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_out,
                                                   const at::Tensor& h, const at::Tensor& y, const at::Tensor& gate,
                                                   const at::Tensor& scale, const at::Tensor& mean,
                                                   const at::Tensor& rstd) {
  check_modulate_backward(grad_out, "grad_out", h, "h", scale, mean, rstd);
  check_like(y, h, "y");
  check_mod(gate, h, "gate");
  if (grad_h.has_value() && grad_h->defined()) check_like(*grad_h, h, "grad_h");
}

// The outputs of the family's forward for the parts it runs (residual, modulate; csrc/cpu/vec/adaln.h,
// csrc/cuda/adaln_kernels.h), x contiguous (B, N, D): out; h when both run; mean and rstd (B, N) in acc_t
// for the modulate part, unless keep_stats is false (inference: nothing kept for a backward). Parts that
// do not run leave their tensors undefined.
struct Forward {
  at::Tensor h, out, mean, rstd;
};

inline Forward forward_outputs(const at::Tensor& x, bool residual, bool modulate, bool keep_stats = true) {
  Forward r;
  r.out = at::empty(x.sizes(), x.options());
  if (residual && modulate) r.h = at::empty(x.sizes(), x.options());
  if (modulate && keep_stats) {
    r.mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc_dtype(x)));
    r.rstd = at::empty_like(r.mean);
  }
  return r;
}

// The gradients of the backward for the parts it runs, g = dout (B, N, D): dx, dshift, dscale (B, D) for
// the modulate part; dy, dgate (B, D) for the residual part.
struct Backward {
  at::Tensor dx, dy, dshift, dscale, dgate;
};

inline Backward backward_outputs(const at::Tensor& g, bool residual, bool modulate) {
  const int64_t B = g.size(0), D = g.size(2);
  Backward r;
  if (modulate) {
    r.dx = at::empty(g.sizes(), g.options());
    r.dshift = at::empty({B, D}, g.options());
    r.dscale = at::empty({B, D}, g.options());
  }
  if (residual) {
    r.dy = at::empty(g.sizes(), g.options());
    r.dgate = at::empty({B, D}, g.options());
  }
  return r;
}

}  // namespace adaln
}  // namespace mdt
