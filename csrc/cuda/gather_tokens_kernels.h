// gather_tokens on CUDA (kernels in gather_tokens_kernels.cu, torch binding in gather_tokens.cpp).
// Tokens contiguous; ids (B, K) int64 in [0, N) (checked on the device).
#pragma once
#include "common.cuh"

namespace mdt {

// out[b,k,:] = x[b,ids[b,k],:]: a row copy with the widest aligned word.
template <typename T>
struct GatherTokensArgs {
  const T* x = nullptr;  // (B, N, D)
  const int64_t* ids = nullptr;
  T* out = nullptr;      // (B, K, D)
  int64_t B = 0, N = 0, K = 0, D = 0;
};

// dx = 0; dx[b,ids[b,k],:] += grad[b,k,:] (atomics: exact for distinct ids, any order for duplicates).
template <typename T>
struct GatherTokensBwdArgs {
  const T* grad = nullptr;  // (B, K, D)
  const int64_t* ids = nullptr;
  T* dx = nullptr;          // (B, N, D)
  int64_t B = 0, N = 0, K = 0, D = 0;
};

template <typename T>
cudaError_t launch_gather_tokens(const GatherTokensArgs<T>& args, cudaStream_t stream);
template <typename T>
cudaError_t launch_gather_tokens_backward(const GatherTokensBwdArgs<T>& args, cudaStream_t stream);

}  // namespace mdt
