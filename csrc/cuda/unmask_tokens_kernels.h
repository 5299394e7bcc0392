#pragma once
#include "launch.h"

namespace mdt {

// inv (B*N int32 scratch) receives the inverse map: inv[b,n] = k if ids[b,k] == n, else -1.
// out[b,n,:] = (inv[b,n] >= 0 ? x_kept[b,inv[b,n],:] : mask[:]) + pos[n,:] (pos may be null).
cudaError_t launch_unmask_tokens(const void* x_kept, const int64_t* ids, const void* mask, const void* pos, void* out,
                                 int32_t* inv, int64_t B, int64_t N, int64_t K, int64_t D, DType dtype,
                                 cudaStream_t stream);
// One read of grad: d_x_kept gets the kept rows; d_mask the sum of the others; d_pos (may be null) the
// sum over the batch. mask_partial is an N*D scratch in the accumulation type (float, double for
// float64); the sums are deterministic (fixed loop orders, no atomics).
cudaError_t launch_unmask_tokens_backward(const void* grad, const int64_t* ids, void* d_x_kept, void* d_mask,
                                          void* d_pos, int32_t* inv, void* mask_partial, int64_t B, int64_t N,
                                          int64_t K, int64_t D, DType dtype, cudaStream_t stream);

}  // namespace mdt
