// unmask_tokens on CUDA (kernels in unmask_tokens_kernels.cu, torch binding in unmask_tokens.cpp).
// Tokens contiguous; ids (B, K) int64, distinct per row, in [0, N) (checked on the device); inv is a
// (B, N) int32 scratch that receives the inverse map: inv[b,n] = k if ids[b,k] == n, else -1.
#pragma once
#include "common.cuh"

namespace mdt {

// out[b,n,:] = (inv[b,n] >= 0 ? x_kept[b,inv[b,n],:] : mask[:]) + pos[n,:] (pos may be null).
template <typename T>
struct UnmaskTokensArgs {
  const T* x_kept = nullptr;  // (B, K, D)
  const int64_t* ids = nullptr;
  const T* mask = nullptr;    // (D,)
  const T* pos = nullptr;     // (N, D) or null
  T* out = nullptr;           // (B, N, D)
  int32_t* inv = nullptr;
  int64_t B = 0, N = 0, K = 0, D = 0;
};

// One read of grad: d_x_kept gets the kept rows; d_mask the sum of the others; d_pos (may be null) the
// sum over the batch. mask_partial is an (N, D) scratch in the accumulation type A; the sums are
// deterministic (fixed loop orders, no atomics).
template <typename T, typename A = typename Acc<T>::type>
struct UnmaskTokensBwdArgs {
  const T* grad = nullptr;  // (B, N, D)
  const int64_t* ids = nullptr;
  T* d_x_kept = nullptr;    // (B, K, D)
  T* d_mask = nullptr;      // (D,)
  T* d_pos = nullptr;       // (N, D) or null
  int32_t* inv = nullptr;
  A* mask_partial = nullptr;
  int64_t B = 0, N = 0, K = 0, D = 0;
};

template <typename T>
cudaError_t launch_unmask_tokens(const UnmaskTokensArgs<T>& args, cudaStream_t stream);
template <typename T>
cudaError_t launch_unmask_tokens_backward(const UnmaskTokensBwdArgs<T>& args, cudaStream_t stream);

}  // namespace mdt
