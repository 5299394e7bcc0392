// masked_rel_pos_bias on CUDA (kernels in masked_rel_pos_bias_kernels.cu, torch binding in
// masked_rel_pos_bias.cpp). ids (B, K) int64 in [0, G*G) (checked on the device), for a G x G grid whose
// relative-position table is (R, H), R = (2G-1)^2.
#pragma once
#include "common.cuh"

namespace mdt {

// out[b,h,i,j] = table[idx(ids[b,i], ids[b,j]) * H + h].
template <typename T>
struct MaskedRelPosBiasArgs {
  const T* table = nullptr;  // (R, H) contiguous
  const int64_t* ids = nullptr;
  T* out = nullptr;          // (B, H, K, K) contiguous
  int64_t B = 0, H = 0, K = 0, G = 0;
};

// d_table_acc (R, H) in the accumulation type A, zeroed here, accumulated per (b, h) block in shared
// memory (global atomics when the table does not fit).
template <typename T, typename A = typename Acc<T>::type>
struct MaskedRelPosBiasBwdArgs {
  const T* grad = nullptr;  // (B, H, K, K) contiguous
  const int64_t* ids = nullptr;
  A* d_table_acc = nullptr;
  int64_t B = 0, H = 0, K = 0, G = 0, R = 0;
};

template <typename T>
cudaError_t launch_masked_rel_pos_bias(const MaskedRelPosBiasArgs<T>& args, cudaStream_t stream);
template <typename T>
cudaError_t launch_masked_rel_pos_bias_backward(const MaskedRelPosBiasBwdArgs<T>& args, cudaStream_t stream);

}  // namespace mdt
