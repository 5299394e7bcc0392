// linear_gelu on CPU: y = GELU_tanh(x W^T + b), the first half of every transformer MLP.
// Eager PyTorch runs addmm (which first copies b into every output row, then a GEMM accumulating onto
// it), then GELU as its own pass; backward runs gelu_backward, then sums dh over rows for db in another
// pass. Here: h = x W^T (one GEMM on the engine of gemm.h, no bias copy), then one pass
// y = GELU(h + b) that computes tanh with the vectorised fast::tanh; backward is one pass
// dh = g * GELU'(h + b) that also accumulates db, then the two GEMMs dx = dh W (gemm.h's engine) and
// dW = dh^T x (at::mm). h (without b) is saved for the backward, as PyTorch saves the GELU input.
// db: rows are split in fixed chunks of kRowChunk, each with its own acc_t partial, added in chunk order:
// deterministic for any thread count.
#include <torch/library.h>

#include <vector>

#include "adaln_rows.h"
#include "fast_math.h"
#include "gemm.h"
#include "ops/linear_gelu.h"

namespace mdt {
namespace {

using adaln::acc_t;

constexpr int64_t kRowChunk = 16;

template <typename A>
struct Gelu {
  static constexpr A k0 = A(0.7978845608028654);  // sqrt(2 / pi)
  static constexpr A k1 = A(0.044715);
  // GELU(u) = u/2 (1 + tanh(k0 (u + k1 u^3)))
  static A value(A u) { return A(0.5) * u * (A(1) + fast::tanh(k0 * (u + k1 * u * u * u))); }
  // GELU'(u) = (1 + t)/2 + u/2 (1 - t^2) k0 (1 + 3 k1 u^2)
  static A grad(A u) {
    const A t = fast::tanh(k0 * (u + k1 * u * u * u));
    return A(0.5) * (A(1) + t) + A(0.5) * u * (A(1) - t * t) * k0 * (A(1) + A(3) * k1 * u * u);
  }
};

template <typename T>
void forward_kernel(const at::Tensor& h, const at::Tensor& bias, at::Tensor& y) {
  using A = acc_t<T>;
  const int64_t M = h.size(0), D = h.size(1);
  const T* hp = h.const_data_ptr<T>();
  const T* bp = bias.const_data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const bool stream = adaln::use_streaming(2 * h.numel() * int64_t{sizeof(T)});
  at::parallel_for(0, M, adaln::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> bbuf(D), hbuf(D), obuf(D);
    const A* __restrict__ b = adaln::load_row(bp, D, bbuf.data());
    for (int64_t r = begin; r < end; ++r) {
      const A* __restrict__ hr = adaln::load_row(hp + r * D, D, hbuf.data());
      A* __restrict__ o = obuf.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = Gelu<A>::value(hr[d] + b[d]);
      adaln::store_row(yp + r * D, o, D, stream);
    }
    adaln::stream_fence();
  });
}

template <typename T>
void backward_kernel(const at::Tensor& g, const at::Tensor& h, const at::Tensor& bias, at::Tensor& dh,
                     at::Tensor& partial) {
  using A = acc_t<T>;
  const int64_t M = h.size(0), D = h.size(1), C = partial.size(0);
  const T* gp = g.const_data_ptr<T>();
  const T* hp = h.const_data_ptr<T>();
  const T* bp = bias.const_data_ptr<T>();
  T* dp = dh.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> bbuf(D), gbuf(D), hbuf(D), obuf(D);
    const A* __restrict__ b = adaln::load_row(bp, D, bbuf.data());
    for (int64_t c = begin; c < end; ++c) {
      A* __restrict__ db = part + c * D;
      std::fill(db, db + D, A(0));
      for (int64_t r = c * kRowChunk; r < std::min(M, (c + 1) * kRowChunk); ++r) {
        const A* __restrict__ gr = adaln::load_row(gp + r * D, D, gbuf.data());
        const A* __restrict__ hr = adaln::load_row(hp + r * D, D, hbuf.data());
        A* __restrict__ o = obuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const A v = gr[d] * Gelu<A>::grad(hr[d] + b[d]);
          o[d] = v;
          db[d] += v;
        }
        adaln::store_row(dp + r * D, o, D);  // read again right away by the dx/dW GEMMs: keep it cached
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> linear_gelu_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                   const at::Tensor& bias) {
  check_linear_gelu(x, weight, bias);
  const auto h = gemm::linear(linear_as_rows(x), weight, std::nullopt);  // (M, Dout), no bias
  auto y = at::empty_like(h);
  const auto b = bias.contiguous();
  if (h.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "linear_gelu_cpu",
                                    [&] { forward_kernel<scalar_t>(h, b, y); });
  }
  return {y.view(linear_out_shape(x, weight.size(0))), h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_gelu_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                        const at::Tensor& weight,
                                                                        const at::Tensor& bias, const at::Tensor& h) {
  check_linear_gelu_backward(grad, x, weight, bias, h);
  const auto x2 = linear_as_rows(x);
  const auto g = linear_as_rows(grad);
  const auto hc = h.contiguous();
  const auto b = bias.contiguous();
  const int64_t M = hc.size(0), D = hc.size(1);
  auto dh = at::empty_like(hc);
  const int64_t C = (M + kRowChunk - 1) / kRowChunk;
  auto partial = at::empty({C, D}, hc.options().dtype(adaln::acc_dtype(hc)));
  if (hc.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hc.scalar_type(), "linear_gelu_backward_cpu",
                                    [&] { backward_kernel<scalar_t>(g, hc, b, dh, partial); });
  }
  auto db_acc = at::zeros({D}, partial.options());
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "linear_gelu_db", [&] {
    scalar_t* acc = db_acc.data_ptr<scalar_t>();
    const scalar_t* p = partial.const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c)  // chunk partials, added in chunk order
      for (int64_t d = 0; d < D; ++d) acc[d] += p[c * D + d];
  });
  const auto db = db_acc.to(bias.scalar_type());
  const auto dx = gemm::linear(dh, weight.t(), std::nullopt).view(x.sizes());
  const auto dw = at::mm(dh.t(), x2);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("linear_gelu", &linear_gelu_cpu);
  m.impl("linear_gelu_backward", &linear_gelu_backward_cpu);
}

}  // namespace mdt
