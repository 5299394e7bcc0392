// The inner loops of the fused Adan step and of the gradients' global norm, in at::vec: compiled once
// per instruction set (csrc/cpu/isa.h), so the vector width, the 16-bit conversions (round to nearest
// even, as c10's) and the square root are the CPU's on every ISA. Math as in csrc/cpu/adan.cpp.
#include "adan.h"

#include <cmath>
#include <type_traits>

#include "convert.h"

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

struct VConsts {
  Vec clip, b1, b2, b3, omb1, omb2, omb3, step_size, step_size_diff, bc3_sqrt, eps, decay;
  explicit VConsts(const AdanConsts& c)
      : clip(c.clip), b1(c.b1), b2(c.b2), b3(c.b3), omb1(c.omb1), omb2(c.omb2), omb3(c.omb3),
        step_size(c.step_size), step_size_diff(c.step_size_diff), bc3_sqrt(c.bc3_sqrt), eps(c.eps),
        decay(c.decay) {}
};

// One register of the update, in place.
template <bool kFirst, bool kNoProx>
inline void update(Vec& p, const Vec& g, Vec& m, Vec& n, Vec& v, Vec& q, const VConsts& c) {
  const Vec gk = c.clip * g;
  Vec d(0.f);
  if constexpr (!kFirst) d = gk + q;
  m = c.b1 * m + c.omb1 * gk;
  v = c.b2 * v + c.omb2 * d;
  const Vec u = gk + c.b2 * d;
  n = c.b3 * n + c.omb3 * u * u;
  q = gk.neg();
  const Vec denom = n.sqrt() / c.bc3_sqrt + c.eps;
  const Vec upd = (c.step_size * m + c.step_size_diff * v) / denom;
  p = kNoProx ? p * c.decay - upd : (p - upd) / c.decay;
}

// Elements [i0, end) one at a time in the math type M: the tails, and all of fp64.
template <bool kFirst, bool kNoProx, typename M, typename P, typename S>
inline void update_scalar(P* __restrict p, const P* __restrict g, S* __restrict m, S* __restrict n,
                          S* __restrict v, S* __restrict q, int64_t i0, int64_t end, const AdanConsts& c) {
  const auto k = [](double x) { return static_cast<M>(x); };
  for (int64_t i = i0; i < end; ++i) {
    const M gk = k(c.clip) * static_cast<M>(g[i]);
    const M d = kFirst ? M(0) : gk + static_cast<M>(q[i]);
    const M mk = k(c.b1) * static_cast<M>(m[i]) + k(c.omb1) * gk;
    const M vk = k(c.b2) * static_cast<M>(v[i]) + k(c.omb2) * d;
    const M u = gk + k(c.b2) * d;
    const M nk = k(c.b3) * static_cast<M>(n[i]) + k(c.omb3) * u * u;
    const M denom = std::sqrt(nk) / k(c.bc3_sqrt) + k(c.eps);
    const M upd = (k(c.step_size) * mk + k(c.step_size_diff) * vk) / denom;
    const M pk = static_cast<M>(p[i]);
    p[i] = static_cast<P>(kNoProx ? pk * k(c.decay) - upd : (pk - upd) / k(c.decay));
    m[i] = static_cast<S>(mk);
    v[i] = static_cast<S>(vk);
    n[i] = static_cast<S>(nk);
    q[i] = static_cast<S>(-gk);
  }
}

template <bool kFirst, bool kNoProx, typename P, typename S>
void run_slice(const AdanStep& step, const AdanSlice& s) {
  auto* p = static_cast<P*>(s.p);
  const auto* g = static_cast<const P*>(s.g);
  auto *m = static_cast<S*>(s.m), *n = static_cast<S*>(s.n), *v = static_cast<S*>(s.v), *q = static_cast<S*>(s.q);
  int64_t i = s.begin;
  if constexpr (std::is_same_v<P, double> || std::is_same_v<S, double>) {
    update_scalar<kFirst, kNoProx, double>(p, g, m, n, v, q, i, s.end, step.c);
  } else {
    const VConsts c(step.c);
    for (; i + 2 * kW <= s.end; i += 2 * kW) {
      Vec p0, p1, g0, g1, m0, m1, n0, n1, v0, v1, q0, q1;
      load2(p + i, p0, p1);
      load2(g + i, g0, g1);
      load2(m + i, m0, m1);
      load2(n + i, n0, n1);
      load2(v + i, v0, v1);
      if constexpr (!kFirst) load2(q + i, q0, q1);
      update<kFirst, kNoProx>(p0, g0, m0, n0, v0, q0, c);
      update<kFirst, kNoProx>(p1, g1, m1, n1, v1, q1, c);
      store2(p + i, p0, p1);
      store2(m + i, m0, m1);
      store2(n + i, n0, n1);
      store2(v + i, v0, v1);
      store2(q + i, q0, q1);
    }
    update_scalar<kFirst, kNoProx, float>(p, g, m, n, v, q, i, s.end, step.c);
  }
}

template <typename P, typename S>
void run_slice_flags(const AdanStep& step, const AdanSlice& s) {
  if (step.first) {
    step.no_prox ? run_slice<true, true, P, S>(step, s) : run_slice<true, false, P, S>(step, s);
  } else {
    step.no_prox ? run_slice<false, true, P, S>(step, s) : run_slice<false, false, P, S>(step, s);
  }
}

void adan_slice_impl(const AdanStep& step, const AdanSlice& s) {
  // The states are fp32 or of the parameter's type (adan.cpp checks).
  with_type(step.param, [&](auto p_tag) {
    using P = decltype(p_tag);
    if (step.state == Dtype::kFloat32) run_slice_flags<P, float>(step, s);
    else run_slice_flags<P, P>(step, s);
  });
}

// fp32 lanes (two registers), added up in double; like torch's fp32 norm, a square above ~3e38
// overflows to inf. fp64 sums in double.
template <typename T>
double sum_squares_t(const T* __restrict x, int64_t n) {
  if constexpr (std::is_same_v<T, double>) {
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) total += x[i] * x[i];
    return total;
  } else {
    Vec acc0(0.f), acc1(0.f);
    int64_t i = 0;
    for (; i + 2 * kW <= n; i += 2 * kW) {
      Vec a, b;
      load2(x + i, a, b);
      acc0 = at::vec::fmadd(a, a, acc0);
      acc1 = at::vec::fmadd(b, b, acc1);
    }
    float lanes[2 * kW];
    acc0.store(lanes);
    acc1.store(lanes + kW);
    double total = 0.0;
    for (int64_t k = 0; k < 2 * kW; ++k) total += lanes[k];
    for (; i < n; ++i) {
      const float v = static_cast<float>(x[i]);
      total += v * v;
    }
    return total;
  }
}

double sum_squares_impl(Dtype dtype, const void* x, int64_t n) {
  double out = 0.0;
  with_type(dtype, [&](auto tag) { out = sum_squares_t(static_cast<const decltype(tag)*>(x), n); });
  return out;
}

}  // namespace
}  // namespace CPU_CAPABILITY

MDT_DEFINE_KERNEL(AdanSliceFn, adan_slice, &adan_slice_impl)
MDT_DEFINE_KERNEL(SumSquaresFn, sum_squares, &sum_squares_impl)

}  // namespace mdt::cpu
