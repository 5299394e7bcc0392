// The adaLN family on CUDA (kernels in adaln_kernels.cu, torch binding in adaln.cpp): adaln_modulate,
// gated_residual and residual_adaln_modulate are one computation in two parts, and each op runs one or both:
//   residual:  h = x + gate[b] * y
//   modulate:  out = LayerNorm_no_affine(h) * (1 + scale[b]) + shift[b]   (h = x without the residual part)
// A part runs when its pointers are set (gate for the residual, scale for the modulate part). Tokens
// (x, y, h, out, g, gh, dx, dy) are contiguous (B, N, D); the (B, D) modulation rows are read through
// their strides; mean/rstd (B, N) and the workspace are in the accumulation type A (float, double for
// double); dshift/dscale/dgate are contiguous (B, D).
#pragma once
#include "common.cuh"

namespace mdt {

template <typename T, typename A = typename Acc<T>::type>
struct AdalnFwdArgs {
  const T* x = nullptr;
  ModRows<T> gate;      // residual part
  const T* y = nullptr;
  ModRows<T> shift, scale;  // modulate part
  T* h = nullptr;       // written when both parts run
  T* out = nullptr;     // the residual part alone writes h here
  A* mean = nullptr;    // modulate part: h's row statistics
  A* rstd = nullptr;
  int64_t B = 0, N = 0, D = 0;
  double eps = 0;
};

// g = dout (of out, or of h for the residual part alone).
template <typename T, typename A = typename Acc<T>::type>
struct AdalnBwdArgs {
  const T* g = nullptr;
  const T* gh = nullptr;  // both parts: dh from the residual stream (may be null)
  const T* x = nullptr;   // modulate part: its input (x, or h as stored)
  ModRows<T> scale;       // modulate part
  const A* mean = nullptr;
  const A* rstd = nullptr;
  ModRows<T> gate;        // residual part
  const T* y = nullptr;
  T* dx = nullptr;        // modulate part: d(its input)
  T* dy = nullptr;        // residual part
  T* dshift = nullptr;    // modulate part
  T* dscale = nullptr;
  T* dgate = nullptr;     // residual part
  A* workspace = nullptr; // adaln_bwd_workspace(B, N, D, planes) elements
  int64_t B = 0, N = 0, D = 0;
};

template <typename T>
cudaError_t launch_adaln_fwd(const AdalnFwdArgs<T>& args, cudaStream_t stream);

// Elements of the workspace launch_adaln_bwd needs for `planes` per-sample sums (dshift and dscale for the
// modulate part, dgate for the residual part).
int64_t adaln_bwd_workspace(int64_t B, int64_t N, int64_t D, int64_t planes);

template <typename T>
cudaError_t launch_adaln_bwd(const AdalnBwdArgs<T>& args, cudaStream_t stream);

}  // namespace mdt
