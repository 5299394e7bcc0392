// CUDA launchers of adaln_modulate (csrc/cuda/adaln_modulate_kernels.cu). Raw pointers: x, out, grad, dx
// contiguous (B,N,D); shift/scale (B,D) with the given strides (in elements); mean/rstd (B,N) and the
// workspace in the accumulation type (float, double for kFloat64); dshift/dscale contiguous (B,D).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace mdt {

cudaError_t launch_adaln_modulate_fwd(DType dtype, const void* x, const void* shift, const void* scale, void* out,
                                      void* mean, void* rstd, int64_t B, int64_t N, int64_t D, int64_t shift_sb,
                                      int64_t shift_sd, int64_t scale_sb, int64_t scale_sd, double eps,
                                      cudaStream_t stream);

// Elements of the workspace launch_adaln_modulate_bwd needs.
int64_t adaln_modulate_bwd_workspace(int64_t B, int64_t N, int64_t D);

cudaError_t launch_adaln_modulate_bwd(DType dtype, const void* grad, const void* x, const void* scale,
                                      const void* mean, const void* rstd, void* dx, void* dshift, void* dscale,
                                      void* workspace, int64_t B, int64_t N, int64_t D, int64_t scale_sb,
                                      int64_t scale_sd, cudaStream_t stream);

}  // namespace mdt
