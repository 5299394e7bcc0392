// Row helpers of the per-instruction-set kernels that work on rows of D features (vec/adaln.cpp,
// vec/linear_gelu.cpp): rows in acc_t, converted with at::vec, streaming stores on every x86 ISA,
// strided (B, D) modulation rows, LayerNorm moments and its backward's row pass, ordered chunk sums.
// Included only by vec/*.cpp, inside their CPU_CAPABILITY namespace.
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "view.h"

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace rowwise {

template <typename T>
using acc_t = at::opmath_type<T>;

// Elements per parallel task: kGrainSize (ATen/TensorIterator.h, too heavy to include here).
constexpr int64_t kGrainSize = 32768;


template <typename T>
using acc_t = at::opmath_type<T>;

template <typename T>
using acc_t = at::opmath_type<T>;

// The row as acc_t: the row itself when T is acc_t, else converted into buf.
template <typename T>
inline const acc_t<T>* load_row(const T* src, int64_t n, acc_t<T>* buf) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return src;
  } else {
    convert_row(src, buf, n);
    return buf;
  }
}

// Streaming (non-temporal) stores for fp32 outputs of calls that move more than kStreamBytes. A streaming
// store skips the read-for-ownership of a normal one, a third of a write stream's traffic; the price is
// that the output is not left in cache. In a training step these outputs feed a GEMM (compute-bound on
// CPU, its input reads are prefetched) or are read back in the backward after the working set has long
// left the cache, so the trade pays (fwd+bwd at MDT block shapes, benchmarks/results). A
// cache-hot loop over one forward alone (inputs and output fitting in L3) is the case that loses.
// Small calls keep normal stores.
constexpr int64_t kStreamBytes = int64_t{8} << 20;

inline bool use_streaming(int64_t bytes) { return bytes > kStreamBytes; }

// dst[0:n] = buf[0:n], with streaming stores for fp32 when `stream`. Callers end their parallel task with
// stream_fence().
template <typename T>
inline void store_row(T* dst, const acc_t<T>* buf, int64_t n, bool stream = false) {
  if constexpr (std::is_same_v<T, float>) {
#if defined(__SSE2__)
    if (stream) {
      // The widest streaming store of this instruction set (AVX-512: 16 floats, AVX2: 8, SSE: 4).
#if defined(CPU_CAPABILITY_AVX512)
      constexpr int64_t w = 16;
#elif defined(CPU_CAPABILITY_AVX2)
      constexpr int64_t w = 8;
#else
      constexpr int64_t w = 4;
#endif
      int64_t i = 0;
      for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & (w * sizeof(float) - 1)) != 0; ++i) dst[i] = buf[i];
      for (; i + w <= n; i += w) {
#if defined(CPU_CAPABILITY_AVX512)
        _mm512_stream_ps(dst + i, _mm512_loadu_ps(buf + i));
#elif defined(CPU_CAPABILITY_AVX2)
        _mm256_stream_ps(dst + i, _mm256_loadu_ps(buf + i));
#else
        _mm_stream_ps(dst + i, _mm_loadu_ps(buf + i));
#endif
      }
      for (; i < n; ++i) dst[i] = buf[i];
      return;
    }
#endif
    std::copy(buf, buf + n, dst);
  } else if constexpr (std::is_same_v<T, acc_t<T>>) {
    std::copy(buf, buf + n, dst);
  } else {
    convert_row(buf, dst, n);
  }
}

// Orders the streaming stores of this thread before the parallel region ends.
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// A (B,D) modulation tensor read through its strides.
template <typename T>
struct ModRows {
  const T* base;
  int64_t stride_b, stride_d, D;
  explicit ModRows(const View& t)
      : base(t.const_data_ptr<T>()), stride_b(t.stride(0)), stride_d(t.stride(1)), D(t.size(1)) {}
  // out[d] = add + t[b, d]
  void load(int64_t b, acc_t<T> add, acc_t<T>* out) const {
    const T* row = base + b * stride_b;
    if (stride_d == 1) {
      for (int64_t d = 0; d < D; ++d) out[d] = add + static_cast<acc_t<T>>(row[d]);
    } else {
      for (int64_t d = 0; d < D; ++d) out[d] = add + static_cast<acc_t<T>>(row[d * stride_d]);
    }
  }
};

// Mean and 1/sqrt(var + eps) of a row, two passes over the (cached) row.
template <typename A>
inline void row_moments(const A* __restrict__ x, int64_t D, double eps, A& mean, A& rstd) {
  if (D == 0) {
    mean = A(0);
    rstd = A(1) / std::sqrt(static_cast<A>(eps));
    return;
  }
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) s += x[d];
  const A m = s / static_cast<A>(D);
  A v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t d = 0; d < D; ++d) {
    const A c = x[d] - m;
    v += c * c;
  }
  mean = m;
  rstd = A(1) / std::sqrt(v / static_cast<A>(D) + static_cast<A>(eps));
}

// Backward of LayerNorm + modulate, first pass over one row (xhat = (x - m) * rs, a = 1 + scale, g = dout):
// adds g and g * xhat to the chunk partials ps (dshift) and pc (dscale); returns the row constants of
// dx = rsd * (g*a - c1 - xhat * c2), with c1 = mean_d(g*a) and c2 = mean_d(g*a*xhat).
template <typename A>
struct ModulateGradRow {
  A c1, c2, rsd;
};

template <typename A>
inline ModulateGradRow<A> modulate_grad_row(const A* __restrict__ xr, const A* __restrict__ gr,
                                            const A* __restrict__ ap, A m, A rs, int64_t D, A inv_d,
                                            A* __restrict__ ps, A* __restrict__ pc) {
  A s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t d = 0; d < D; ++d) {
    const A xh = (xr[d] - m) * rs;
    const A ga = gr[d] * ap[d];
    s1 += ga;
    s2 += ga * xh;
    ps[d] += gr[d];
    pc[d] += gr[d] * xh;
  }
  // One feature: the normalised value is constant, d/dx is exactly 0 (g*a - mean(g*a) would be left at
  // rounding level by FMA contraction, then multiplied by rstd = 1/sqrt(eps)).
  return {s1 * inv_d, s2 * inv_d, D > 1 ? rs : A(0)};
}

// outs[p][b, d] = sum over chunks c (in order) of partial[p, b, c, d], stored as T, for the P planes
// (dshift, dscale, dgate, ...) of a (P, B, C, D) partial buffer. One parallel region for all planes.
template <typename T>
void reduce_chunks(const acc_t<T>* partial, int64_t B, int64_t C, int64_t D, const std::vector<T*>& dst) {
  using A = acc_t<T>;
  const int64_t items = static_cast<int64_t>(dst.size()) * B;
  const int64_t grain = std::max<int64_t>(1, kGrainSize / std::max<int64_t>(C * D, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t plane = item / B, b = item % B;
      const A* p = partial + item * C * D;  // (plane * B + b) * C * D
      T* o = dst[plane] + b * D;
      if (C == 0) {
        std::fill(o, o + D, T(0));
      } else if constexpr (std::is_same_v<T, A>) {
        std::copy(p, p + D, o);
        for (int64_t c = 1; c < C; ++c) {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) o[d] += p[c * D + d];
        }
      } else {
        for (int64_t d = 0; d < D; ++d) {
          A s = p[d];
          for (int64_t c = 1; c < C; ++c) s += p[c * D + d];
          o[d] = static_cast<T>(s);
        }
      }
    }
  });
}

inline int64_t grain_rows(int64_t D) { return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(D, 1)); }

}  // namespace rowwise
}  // namespace CPU_CAPABILITY
}  // namespace mdt::cpu
