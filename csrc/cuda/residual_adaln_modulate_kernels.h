// CUDA launchers of residual_adaln_modulate (csrc/cuda/residual_adaln_modulate_kernels.cu). Raw pointers:
// x, y, h, out, grad_h, grad_out, dx, dy contiguous (B,N,D) (grad_h may be null: no residual gradient);
// gate/shift/scale (B,D) with the given strides (in elements); mean/rstd (B,N) and the workspace in the
// accumulation type (float, double for kFloat64); dgate/dshift/dscale contiguous (B,D).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace mdt {

// h = x + gate*y, out = LayerNorm_no_affine(h) * (1 + scale) + shift (statistics of h as stored).
cudaError_t launch_residual_adaln_modulate_fwd(DType dtype, const void* x, const void* gate, const void* y,
                                               const void* shift, const void* scale, void* h, void* out, void* mean,
                                               void* rstd, int64_t B, int64_t N, int64_t D, int64_t gate_sb,
                                               int64_t gate_sd, int64_t shift_sb, int64_t shift_sd, int64_t scale_sb,
                                               int64_t scale_sd, double eps, cudaStream_t stream);

// Elements of the workspace launch_residual_adaln_modulate_bwd needs.
int64_t residual_adaln_modulate_bwd_workspace(int64_t B, int64_t N, int64_t D);

cudaError_t launch_residual_adaln_modulate_bwd(DType dtype, const void* grad_h, const void* grad_out, const void* h,
                                               const void* y, const void* gate, const void* scale, const void* mean,
                                               const void* rstd, void* dx, void* dgate, void* dy, void* dshift,
                                               void* dscale, void* workspace, int64_t B, int64_t N, int64_t D,
                                               int64_t gate_sb, int64_t gate_sd, int64_t scale_sb, int64_t scale_sd,
                                               cudaStream_t stream);

}  // namespace mdt
