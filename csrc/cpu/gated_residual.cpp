// gated_residual on CPU: out = x + gate[b] * y in one pass (eager: gate*y to a temporary, then the add).
// Backward with g = dout: dx = g (returned by the Python autograd rule, no copy), dy = gate[b] * g,
// dgate[b] = sum_n g * y. One task per (sample, token chunk): reads g and y, writes dy and the
// chunk's dgate partial; chunks are added in order (deterministic for any thread count).
#include <torch/library.h>

#include <vector>

#include "adaln_rows.h"

namespace mdt {
namespace {

using adaln::acc_t;

template <typename T>
void forward_kernel(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, at::Tensor& out) {
  using A = acc_t<T>;
  const int64_t N = x.size(1), D = x.size(2), rows = x.size(0) * N;
  const T* xp = x.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  const bool stream = adaln::use_streaming(3 * x.numel() * int64_t{sizeof(T)});
  const adaln::ModRows<T> gate_rows(gate);
  at::parallel_for(0, rows, adaln::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> gt(D), xbuf(D), ybuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      if (b != cur) {
        gate_rows.load(b, A(0), gt.data());
        cur = b;
      }
      const A* __restrict__ xr = adaln::load_row(xp + r * D, D, xbuf.data());
      const A* __restrict__ yr = adaln::load_row(yp + r * D, D, ybuf.data());
      const A* __restrict__ gtp = gt.data();
      A* __restrict__ o = obuf.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = xr[d] + gtp[d] * yr[d];
      adaln::store_row(op + r * D, o, D, stream);
    }
    adaln::stream_fence();
  });
}

template <typename T>
void backward_kernel(const at::Tensor& g, const at::Tensor& gate, const at::Tensor& y, at::Tensor& dy,
                     at::Tensor& partial) {
  using A = acc_t<T>;
  const int64_t B = y.size(0), N = y.size(1), D = y.size(2), C = partial.size(1);
  const T* gp = g.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  T* dyp = dy.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  const bool stream = adaln::use_streaming(3 * y.numel() * int64_t{sizeof(T)});
  const adaln::ModRows<T> gate_rows(gate);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> gt(D), gbuf(D), ybuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / C, c = item % C;
      if (b != cur) {
        gate_rows.load(b, A(0), gt.data());
        cur = b;
      }
      A* __restrict__ pg = part + item * D;
      std::fill(pg, pg + D, A(0));
      const A* __restrict__ gtp = gt.data();
      for (int64_t n = c * adaln::kTokenChunk; n < std::min(N, (c + 1) * adaln::kTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ gr = adaln::load_row(gp + r * D, D, gbuf.data());
        const A* __restrict__ yr = adaln::load_row(yp + r * D, D, ybuf.data());
        A* __restrict__ o = obuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          o[d] = gtp[d] * gr[d];
          pg[d] += gr[d] * yr[d];
        }
        adaln::store_row(dyp + r * D, o, D, stream);
      }
    }
    adaln::stream_fence();
  });
}

at::Tensor gated_residual_cpu(const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y_in) {
  adaln::check_gated_residual(x_in, gate, y_in);
  const auto x = x_in.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gated_residual_cpu",
                                  [&] { forward_kernel<scalar_t>(x, gate, y_in.contiguous(), out); });
  return out;
}

// -> (dgate, dy)
std::tuple<at::Tensor, at::Tensor> gated_residual_backward_cpu(const at::Tensor& grad, const at::Tensor& gate,
                                                               const at::Tensor& y_in) {
  adaln::check_gated_residual_backward(grad, gate, y_in);
  const auto y = y_in.contiguous();
  const int64_t B = y.size(0), N = y.size(1), D = y.size(2);
  const int64_t C = (N + adaln::kTokenChunk - 1) / adaln::kTokenChunk;
  auto dy = at::empty({B, N, D}, y.options());
  auto dgate = at::empty({B, D}, y.options());
  if (B * D == 0) return {dgate, dy};
  auto partial = at::empty({B, C, D}, y.options().dtype(adaln::acc_dtype(y)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "gated_residual_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad.contiguous(), gate, y, dy, partial);
    adaln::reduce_chunks(partial.const_data_ptr<acc_t<scalar_t>>(), B, C, D, {dgate.data_ptr<scalar_t>()});
  });
  return {dgate, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("gated_residual", &gated_residual_cpu);
  m.impl("gated_residual_backward", &gated_residual_backward_cpu);
}

}  // namespace mdt
