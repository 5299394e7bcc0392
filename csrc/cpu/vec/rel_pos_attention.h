// rel_pos_attention's row passes over one (sample, head) block of K x K scores (csrc/cpu/rel_pos_attention.cpp),
// compiled once per instruction set (vec/rel_pos_attention.cpp, csrc/cpu/isa.h); the GEMMs around them run on
// BLAS. Bias of row i, column j: col[A[i] - L[j]] (rel_pos_offsets.h). fp32, or fp64 (tests).
#pragma once
#include <cstdint>

#include "view.h"

namespace mdt::cpu {

// Forward, in place on P (K x K, row-major, holding S = q k^T): P = softmax_rows(S * scale + bias). When stats
// is not null, row i's max m_i and reciprocal sum 1 / sum_j exp(S[i,j] * scale + bias[i,j] - m_i) go to
// stats[2i], stats[2i+1]: what the backward recomputes P from.
template <typename T>
using RelPosSoftmaxFn = void (*)(T* P, int64_t K, const T* col, const int32_t* A, const int32_t* L, T scale,
                                 T* stats);
// Backward's recomputation, in place on P (holding S = q k^T): the forward's P, bit for bit, from its stats.
template <typename T>
using RelPosProbsFn = void (*)(T* P, int64_t K, const T* col, const int32_t* A, const int32_t* L, T scale,
                               const T* stats);
// Backward, in place on dS (K x K, holding dP = dO v^T): dS = P * (dP - rowsum(P * dP)); dS is also added
// into the table-gradient slice acc at the same offsets as the bias was read.
template <typename T>
using RelPosSoftmaxBwdFn = void (*)(const T* P, T* dS, int64_t K, T* acc, const int32_t* A, const int32_t* L);

MDT_DECLARE_KERNEL(RelPosSoftmaxFn<float>, rel_pos_softmax_f32)
MDT_DECLARE_KERNEL(RelPosSoftmaxFn<double>, rel_pos_softmax_f64)
MDT_DECLARE_KERNEL(RelPosProbsFn<float>, rel_pos_probs_f32)
MDT_DECLARE_KERNEL(RelPosProbsFn<double>, rel_pos_probs_f64)
MDT_DECLARE_KERNEL(RelPosSoftmaxBwdFn<float>, rel_pos_softmax_bwd_f32)
MDT_DECLARE_KERNEL(RelPosSoftmaxBwdFn<double>, rel_pos_softmax_bwd_f64)

// The kernel for T: rel_pos_softmax<float>() etc.
template <typename T>
inline RelPosSoftmaxFn<T> rel_pos_softmax() {
  if constexpr (sizeof(T) == 4) return rel_pos_softmax_f32();
  else return rel_pos_softmax_f64();
}
template <typename T>
inline RelPosProbsFn<T> rel_pos_probs() {
  if constexpr (sizeof(T) == 4) return rel_pos_probs_f32();
  else return rel_pos_probs_f64();
}
template <typename T>
inline RelPosSoftmaxBwdFn<T> rel_pos_softmax_bwd() {
  if constexpr (sizeof(T) == 4) return rel_pos_softmax_bwd_f32();
  else return rel_pos_softmax_bwd_f64();
}

}  // namespace mdt::cpu
