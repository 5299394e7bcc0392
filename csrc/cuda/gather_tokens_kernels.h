#pragma once
#include "launch.h"

namespace mdt {

// out[b,k,:] = x[b,ids[b,k],:]; a dtype-agnostic row copy (row_bytes = D * element size).
cudaError_t launch_gather_tokens(const void* x, const int64_t* ids, void* out, int64_t B, int64_t N, int64_t K,
                                 int64_t row_bytes, cudaStream_t stream);
// dx = 0; dx[b,ids[b,k],:] += grad[b,k,:] (atomics: exact for distinct ids, any order for duplicates).
cudaError_t launch_gather_tokens_backward(const void* grad, const int64_t* ids, void* dx, int64_t B, int64_t N,
                                          int64_t K, int64_t D, DType dtype, cudaStream_t stream);

}  // namespace mdt
