// CUDA launchers of gated_residual (csrc/cuda/gated_residual_kernels.cu). Raw pointers: x, y, out, grad, dy
// contiguous (B,N,D); gate (B,D) with the given strides (in elements); dgate contiguous (B,D); the
// workspace in the accumulation type (float, double for kFloat64).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace mdt {

cudaError_t launch_gated_residual_fwd(DType dtype, const void* x, const void* gate, const void* y, void* out,
                                      int64_t B, int64_t N, int64_t D, int64_t gate_sb, int64_t gate_sd,
                                      cudaStream_t stream);

// Elements of the workspace launch_gated_residual_bwd needs.
int64_t gated_residual_bwd_workspace(int64_t B, int64_t N, int64_t D);

// dy = gate * grad, dgate = sum_n grad * y (dx is grad itself).
cudaError_t launch_gated_residual_bwd(DType dtype, const void* grad, const void* gate, const void* y, void* dy,
                                      void* dgate, void* workspace, int64_t B, int64_t N, int64_t D, int64_t gate_sb,
                                      int64_t gate_sd, cudaStream_t stream);

}  // namespace mdt
