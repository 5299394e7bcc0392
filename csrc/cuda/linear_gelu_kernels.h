// CUDA launchers of linear_gelu (csrc/cuda/linear_gelu_kernels.cu): the elementwise parts around the
// GEMMs, which the binding runs with ATen. Raw pointers: h, y, grad, dh contiguous (M, D) (h = x W^T
// without the bias, D = Dout); bias and dbias contiguous (D,); all of the given dtype; the workspace in
// the accumulation type (float, double for kFloat64).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"

namespace mdt {

// y = GELU_tanh(h + bias[None, :]).
cudaError_t launch_linear_gelu_fwd(DType dtype, const void* h, const void* bias, void* y, int64_t M, int64_t D,
                                   cudaStream_t stream);

// Elements of the workspace launch_linear_gelu_bwd needs.
int64_t linear_gelu_bwd_workspace(int64_t M, int64_t D);

// dh = grad * GELU_tanh'(h + bias[None, :]), dbias = sum over rows of dh (fixed summation order).
cudaError_t launch_linear_gelu_bwd(DType dtype, const void* grad, const void* h, const void* bias, void* dh,
                                   void* dbias, void* workspace, int64_t M, int64_t D, cudaStream_t stream);

}  // namespace mdt
