// Fused multi-tensor Adan step on CPU: one pass over memory per element. For each element it reads
// the parameter, the gradient and the four states and writes the parameter and the four states, all
// in registers in between (44 bytes per fp32 parameter; the foreach reference moves ~184). The work
// is a flat list of fixed-size chunks over every tensor of the call, split across threads.
//
// Math (sail-sg/Adan as coded, computed in fp32, or fp64 for fp64 tensors), with c = clip_coef:
//   g = c * grad;  d = first ? 0 : g + neg_pre_grad          (neg_pre_grad holds -previous g)
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) d;  n = b3 n + (1-b3) (g + b2 d)^2
//   denom = sqrt(n) / sqrt(bc3) + eps;  update = (lr/bc1 * m + lr*b2/bc2 * v) / denom
//   p = no_prox ? p (1 - lr wd) - update : (p - update) / (1 + lr wd);  neg_pre_grad = -g
// A non-finite clip_coef is the caller's "skip this step" signal: nothing is read or written.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
// GCC 12's own intrinsics pass _mm512_undefined_*() through and then warn about it after inlining
// (-W[maybe-]uninitialized, reported at the header's line); silenced for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

#include "ops/adan.h"

namespace mdt {
namespace {

constexpr int64_t kWidth = 16;       // elements per inner block: one AVX-512 register of floats
constexpr int64_t kChunk = 1 << 15;  // elements per unit of parallel work

// Hyper-parameters folded into the constants the inner loop needs, in the math type M.
template <typename M>
struct Consts {
  M clip, b1, b2, b3, omb1, omb2, omb3, step_size, step_size_diff, bc3_sqrt, eps, decay;
};

// In-place sqrt of kWidth values. GCC will not vectorise std::sqrt without -fno-math-errno (which
// would have to be set for every source file), so the one non-arithmetic operation is spelled out.
inline void sqrt_block(float* x) {
#if defined(__AVX512F__)
  _mm512_storeu_ps(x, _mm512_sqrt_ps(_mm512_loadu_ps(x)));
#elif defined(__AVX__)
  _mm256_storeu_ps(x, _mm256_sqrt_ps(_mm256_loadu_ps(x)));
  _mm256_storeu_ps(x + 8, _mm256_sqrt_ps(_mm256_loadu_ps(x + 8)));
#else
  for (int64_t k = 0; k < kWidth; ++k) x[k] = std::sqrt(x[k]);
#endif
}
// kWidth values between a tensor and floats. Vectorised for the 16-bit types with AVX-512, rounding to
// nearest even as c10's conversions do (bf16 NaN -> 0x7FC0, like c10); elsewhere element by element.
template <typename T>
inline void to_float(const T* src, float* dst) {
  for (int64_t k = 0; k < kWidth; ++k) dst[k] = static_cast<float>(src[k]);
}
template <typename T>
inline void from_float(const float* src, T* dst) {
  for (int64_t k = 0; k < kWidth; ++k) dst[k] = static_cast<T>(src[k]);
}
#if defined(__AVX512F__)
template <>
inline void to_float<c10::BFloat16>(const c10::BFloat16* src, float* dst) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  _mm512_storeu_ps(dst, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
}
template <>
inline void from_float<c10::BFloat16>(const float* src, c10::BFloat16* dst) {
  const __m512 x = _mm512_loadu_ps(src);
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(r));
}
template <>
inline void to_float<c10::Half>(const c10::Half* src, float* dst) {
  _mm512_storeu_ps(dst, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src))));
}
template <>
inline void from_float<c10::Half>(const float* src, c10::Half* dst) {
  const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
}
#endif

// kWidth elements starting at p, g, m, ... with fp32 math: converted into registers, updated, stored;
// every loop has a constant trip count, so each unrolls into a few vector instructions.
template <bool kFirst, bool kNoProx, typename P, typename S>
inline void adan_block16(P* p, const P* g, S* m, S* n, S* v, S* q, const Consts<float>& c) {
  float pb[kWidth], gb[kWidth], mb[kWidth], nb[kWidth], vb[kWidth], qb[kWidth], sq[kWidth];
  to_float(g, gb);
  to_float(m, mb);
  to_float(n, nb);
  to_float(v, vb);
  to_float(p, pb);
  if constexpr (!kFirst) to_float(q, qb);
#pragma omp simd
  for (int64_t k = 0; k < kWidth; ++k) {
    const float gk = c.clip * gb[k];
    const float d = kFirst ? 0.f : gk + qb[k];
    mb[k] = c.b1 * mb[k] + c.omb1 * gk;
    vb[k] = c.b2 * vb[k] + c.omb2 * d;
    const float u = gk + c.b2 * d;
    nb[k] = c.b3 * nb[k] + c.omb3 * u * u;
    qb[k] = -gk;
    sq[k] = nb[k];
  }
  sqrt_block(sq);
#pragma omp simd
  for (int64_t k = 0; k < kWidth; ++k) {
    const float denom = sq[k] / c.bc3_sqrt + c.eps;
    const float update = (c.step_size * mb[k] + c.step_size_diff * vb[k]) / denom;
    pb[k] = kNoProx ? pb[k] * c.decay - update : (pb[k] - update) / c.decay;
  }
  from_float(pb, p);
  from_float(mb, m);
  from_float(nb, n);
  from_float(vb, v);
  from_float(qb, q);
}

// Elements [i0, i0 + w) of one tensor, any w: the tails of the fp32-math path and all of fp64.
template <bool kFirst, bool kNoProx, typename P, typename S, typename M>
inline void adan_block(P* __restrict p, const P* __restrict g, S* __restrict m, S* __restrict n,
                       S* __restrict v, S* __restrict q, int64_t i0, int64_t w, const Consts<M>& c) {
  for (int64_t i = i0; i < i0 + w; ++i) {
    const M gk = c.clip * static_cast<M>(g[i]);
    const M d = kFirst ? M(0) : gk + static_cast<M>(q[i]);
    const M mk = c.b1 * static_cast<M>(m[i]) + c.omb1 * gk;
    const M vk = c.b2 * static_cast<M>(v[i]) + c.omb2 * d;
    const M u = gk + c.b2 * d;
    const M nk = c.b3 * static_cast<M>(n[i]) + c.omb3 * u * u;
    const M denom = std::sqrt(nk) / c.bc3_sqrt + c.eps;
    const M update = (c.step_size * mk + c.step_size_diff * vk) / denom;
    const M pk = static_cast<M>(p[i]);
    p[i] = static_cast<P>(kNoProx ? pk * c.decay - update : (pk - update) / c.decay);
    m[i] = static_cast<S>(mk);
    v[i] = static_cast<S>(vk);
    n[i] = static_cast<S>(nk);
    q[i] = static_cast<S>(-gk);
  }
}

struct TensorPtrs {
  void *p, *g, *m, *n, *v, *q;
};
struct WorkItem {
  int64_t tensor, begin, end;
};

template <bool kFirst, bool kNoProx, typename P, typename S, typename M>
void adan_run(const std::vector<TensorPtrs>& ptrs, const std::vector<WorkItem>& work, const Consts<M>& c) {
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem& it = work[w];
      const TensorPtrs& t = ptrs[it.tensor];
      auto* p = static_cast<P*>(t.p);
      const auto* g = static_cast<const P*>(t.g);
      auto *m = static_cast<S*>(t.m), *n = static_cast<S*>(t.n), *v = static_cast<S*>(t.v),
           *q = static_cast<S*>(t.q);
      int64_t i = it.begin;
      if constexpr (std::is_same_v<M, float>) {
        for (; i + kWidth <= it.end; i += kWidth)
          adan_block16<kFirst, kNoProx>(p + i, g + i, m + i, n + i, v + i, q + i, c);
      }
      adan_block<kFirst, kNoProx>(p, g, m, n, v, q, i, it.end - i, c);
    }
  });
}

void adan_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                   at::TensorList exp_avg_diff, at::TensorList neg_pre_grad, const at::Tensor& clip_coef, double lr,
                   double beta1, double beta2, double beta3, double bias_correction1, double bias_correction2,
                   double bias_correction3_sqrt, double eps, double weight_decay, bool no_prox, bool first) {
  check_adan_step(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef, c10::kCPU);
  if (params.empty()) return;
  const auto p_type = params[0].scalar_type(), s_type = exp_avg[0].scalar_type();

  const float clip = clip_coef.item<float>();
  if (!std::isfinite(clip)) return;  // skip signal (non-finite gradients under the skip policy)

  std::vector<TensorPtrs> ptrs;
  std::vector<WorkItem> work;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    if (numel == 0) continue;
    ptrs.push_back({params[i].data_ptr(), const_cast<void*>(grads[i].const_data_ptr()), exp_avg[i].data_ptr(),
                    exp_avg_sq[i].data_ptr(), exp_avg_diff[i].data_ptr(), neg_pre_grad[i].data_ptr()});
    const int64_t t = static_cast<int64_t>(ptrs.size()) - 1;
    for (int64_t b = 0; b < numel; b += kChunk) work.push_back({t, b, std::min(numel, b + kChunk)});
  }
  if (work.empty()) return;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p_type, "adan_step_cpu", [&] {
    using P = scalar_t;
    auto launch = [&](auto s_tag) {
      using S = decltype(s_tag);
      using M = std::conditional_t<std::is_same_v<P, double> || std::is_same_v<S, double>, double, float>;
      const Consts<M> c{static_cast<M>(clip),
                        static_cast<M>(beta1),
                        static_cast<M>(beta2),
                        static_cast<M>(beta3),
                        static_cast<M>(1.0 - beta1),
                        static_cast<M>(1.0 - beta2),
                        static_cast<M>(1.0 - beta3),
                        static_cast<M>(lr / bias_correction1),
                        static_cast<M>(lr * beta2 / bias_correction2),
                        static_cast<M>(bias_correction3_sqrt),
                        static_cast<M>(eps),
                        static_cast<M>(no_prox ? 1.0 - lr * weight_decay : 1.0 + lr * weight_decay)};
      if (first) {
        if (no_prox) adan_run<true, true, P, S>(ptrs, work, c);
        else adan_run<true, false, P, S>(ptrs, work, c);
      } else {
        if (no_prox) adan_run<false, true, P, S>(ptrs, work, c);
        else adan_run<false, false, P, S>(ptrs, work, c);
      }
    };
    if (s_type == at::kFloat) launch(float{});
    else launch(P{});
  });
}

// Sum of squares of x[0, n): kWidth independent fp32 lanes (vectorised; like torch's fp32 norm, a
// square above ~3e38 overflows to inf), added up in double.
template <typename T>
double sum_squares(const T* __restrict x, int64_t n) {
  float lanes[kWidth] = {};
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
#pragma omp simd
    for (int64_t k = 0; k < kWidth; ++k) {
      const float v = static_cast<float>(x[i + k]);
      lanes[k] += v * v;
    }
  }
  double total = 0.0;
  for (int64_t k = 0; k < kWidth; ++k) total += lanes[k];
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    total += v * v;
  }
  return total;
}
template <>
double sum_squares<double>(const double* __restrict x, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += x[i] * x[i];
  return total;
}

// The global L2 norm of the gradients for Adan's clipping and finiteness test, in one parallel pass
// over all tensors (torch._foreach_norm on CPU runs one reduction per tensor). Chunk partial sums are
// added in a fixed order, so the result does not depend on the thread count.
at::Tensor multi_tensor_l2_norm_cpu(at::TensorList tensors) {
  std::vector<at::Tensor> dense;
  std::vector<WorkItem> work;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.is_cpu(), "tensors[", i, "] is on ", t.device(), "; this is the CPU kernel");
    MDT_CHECK_FLOAT(t);
    // Any dense layout will do (order does not matter for a sum); anything else is copied.
    dense.push_back(t.numel() <= 1 || t.is_non_overlapping_and_dense() ? t : t.contiguous());
    for (int64_t b = 0; b < t.numel(); b += kChunk)
      work.push_back({static_cast<int64_t>(i), b, std::min(t.numel(), b + kChunk)});
  }
  std::vector<double> partial(work.size());
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem& it = work[w];
      const at::Tensor& t = dense[it.tensor];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "multi_tensor_l2_norm_cpu", [&] {
        partial[w] = sum_squares(t.const_data_ptr<scalar_t>() + it.begin, it.end - it.begin);
      });
    }
  });
  double total = 0.0;
  for (const double v : partial) total += v;
  return at::scalar_tensor(static_cast<float>(std::sqrt(total)), at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("adan_step_", &adan_step_cpu);
  m.impl("multi_tensor_l2_norm", &multi_tensor_l2_norm_cpu);
}

}  // namespace mdt
