// linear_gelu's bias + GELU passes (vec/linear_gelu.h), compiled once per instruction set: tanh is the
// branch-free fast::tanh, which the compiler vectorises for this instruction set.
#include "linear_gelu.h"

#include "fast_math.h"
#include "rows.h"

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using rowwise::acc_t;
constexpr int64_t kRowChunk = kLinearGeluRowChunk;

template <typename A>
struct Gelu {
  static constexpr A k0 = A(0.7978845608028654);  // sqrt(2 / pi)
  static constexpr A k1 = A(0.044715);
  // GELU(u) = u/2 (1 + tanh(k0 (u + k1 u^3)))
  static A value(A u) { return fast::gelu_tanh(u); }
  // GELU'(u) = (1 + t)/2 + u/2 (1 - t^2) k0 (1 + 3 k1 u^2)
  static A grad(A u) {
    const A t = fast::tanh(k0 * (u + k1 * u * u * u));
    return A(0.5) * (A(1) + t) + A(0.5) * u * (A(1) - t * t) * k0 * (A(1) + A(3) * k1 * u * u);
  }
};

template <typename T>
void forward(const View& h, const View& bias, const View& y) {
  using A = acc_t<T>;
  const int64_t M = h.size(0), D = h.size(1);
  const T* hp = h.const_data_ptr<T>();
  const T* bp = bias.const_data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const bool stream = rowwise::use_streaming(2 * h.numel() * int64_t{sizeof(T)});
  at::parallel_for(0, M, rowwise::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> bbuf(D), hbuf(D), obuf(D);
    const A* __restrict__ b = rowwise::load_row(bp, D, bbuf.data());
    for (int64_t r = begin; r < end; ++r) {
      const A* __restrict__ hr = rowwise::load_row(hp + r * D, D, hbuf.data());
      A* __restrict__ o = obuf.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = Gelu<A>::value(hr[d] + b[d]);
      rowwise::store_row(yp + r * D, o, D, stream);
    }
    rowwise::stream_fence();
  });
}

template <typename T>
void backward(const View& g, const View& h, const View& bias, const View& dh,
                     const View& partial) {
  using A = acc_t<T>;
  const int64_t M = h.size(0), D = h.size(1), C = partial.size(0);
  const T* gp = g.const_data_ptr<T>();
  const T* hp = h.const_data_ptr<T>();
  const T* bp = bias.const_data_ptr<T>();
  T* dp = dh.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> bbuf(D), gbuf(D), hbuf(D), obuf(D);
    const A* __restrict__ b = rowwise::load_row(bp, D, bbuf.data());
    for (int64_t c = begin; c < end; ++c) {
      A* __restrict__ db = part + c * D;
      std::fill(db, db + D, A(0));
      for (int64_t r = c * kRowChunk; r < std::min(M, (c + 1) * kRowChunk); ++r) {
        const A* __restrict__ gr = rowwise::load_row(gp + r * D, D, gbuf.data());
        const A* __restrict__ hr = rowwise::load_row(hp + r * D, D, hbuf.data());
        A* __restrict__ o = obuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const A v = gr[d] * Gelu<A>::grad(hr[d] + b[d]);
          o[d] = v;
          db[d] += v;
        }
        rowwise::store_row(dp + r * D, o, D);  // read again right away by the dx/dW GEMMs: keep it cached
      }
    }
  });
}

void forward_impl(const View& h, const View& bias, const View& y) {
  with_type(h.dtype, [&](auto t) { forward<decltype(t)>(h, bias, y); });
}

void backward_impl(const View& g, const View& h, const View& bias, const View& dh, const View& partial) {
  with_type(h.dtype, [&](auto t) { backward<decltype(t)>(g, h, bias, dh, partial); });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MDT_DEFINE_KERNEL(LinearGeluFwdFn, linear_gelu_fwd, &forward_impl)
MDT_DEFINE_KERNEL(LinearGeluBwdFn, linear_gelu_bwd, &backward_impl)

}  // namespace mdt::cpu
