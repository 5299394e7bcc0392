#pragma once
#include "launch.h"

namespace mdt {

// out (B,H,K,K): out[b,h,i,j] = table[idx(ids[b,i], ids[b,j]) * H + h] for a G x G grid (table (R,H)).
cudaError_t launch_masked_rel_pos_bias(const void* table, const int64_t* ids, void* out, int64_t B, int64_t H,
                                       int64_t K, int64_t G, DType dtype, cudaStream_t stream);
// d_table_acc (R,H) in the accumulation type (float; double for float64), zeroed here, accumulated
// per (b,h) block in shared memory (global atomics when the table does not fit).
cudaError_t launch_masked_rel_pos_bias_backward(const void* grad, const int64_t* ids, void* d_table_acc, int64_t B,
                                                int64_t H, int64_t K, int64_t G, int64_t R, DType dtype,
                                                cudaStream_t stream);

}  // namespace mdt
