// rel_pos_attention's softmax row passes (vec/rel_pos_attention.h), compiled once per instruction set: the
// compiler vectorises the `omp simd` loops, exp included (fast::exp is branch-free), for this instruction set.
#include "rel_pos_attention.h"

#include <algorithm>
#include <limits>

#include "fast_math.h"

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

template <typename T>
void softmax(T* P, int64_t K, const T* col, const int32_t* A, const int32_t* L, T scale, T* stats) {
  for (int64_t i = 0; i < K; ++i) {
    T* __restrict__ s = P + i * K;
    const T* __restrict__ ci = col + A[i];
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < K; ++j) {
      const T x = s[j] * scale + ci[-L[j]];
      s[j] = x;
      mx = std::max(mx, x);
    }
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < K; ++j) {
      s[j] = fast::exp(s[j] - mx);
      sum += s[j];
    }
    const T inv = T(1) / sum;
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) s[j] *= inv;
    if (stats != nullptr) stats[2 * i] = mx, stats[2 * i + 1] = inv;
  }
}

// The same arithmetic as softmax's, given its row max and reciprocal sum.
template <typename T>
void probs(T* P, int64_t K, const T* col, const int32_t* A, const int32_t* L, T scale, const T* stats) {
  for (int64_t i = 0; i < K; ++i) {
    T* __restrict__ s = P + i * K;
    const T* __restrict__ ci = col + A[i];
    const T mx = stats[2 * i], inv = stats[2 * i + 1];
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) s[j] = fast::exp((s[j] * scale + ci[-L[j]]) - mx) * inv;
  }
}

template <typename T>
void softmax_bwd(const T* P, T* dS, int64_t K, T* acc, const int32_t* A, const int32_t* L) {
  for (int64_t i = 0; i < K; ++i) {
    const T* __restrict__ p = P + i * K;
    T* __restrict__ ds = dS + i * K;
    T delta = 0;
#pragma omp simd reduction(+ : delta)
    for (int64_t j = 0; j < K; ++j) delta += p[j] * ds[j];
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) ds[j] = p[j] * (ds[j] - delta);
    T* ai = acc + A[i];
    for (int64_t j = 0; j < K; ++j) ai[-L[j]] += ds[j];  // a scatter: offsets may repeat across rows only
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

MDT_DEFINE_KERNEL(RelPosSoftmaxFn<float>, rel_pos_softmax_f32, &softmax<float>)
MDT_DEFINE_KERNEL(RelPosSoftmaxFn<double>, rel_pos_softmax_f64, &softmax<double>)
MDT_DEFINE_KERNEL(RelPosProbsFn<float>, rel_pos_probs_f32, &probs<float>)
MDT_DEFINE_KERNEL(RelPosProbsFn<double>, rel_pos_probs_f64, &probs<double>)
MDT_DEFINE_KERNEL(RelPosSoftmaxBwdFn<float>, rel_pos_softmax_bwd_f32, &softmax_bwd<float>)
MDT_DEFINE_KERNEL(RelPosSoftmaxBwdFn<double>, rel_pos_softmax_bwd_f64, &softmax_bwd<double>)

}  // namespace mdt::cpu
