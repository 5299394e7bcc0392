// adaln_modulate on CPU: out = LayerNorm_no_affine(x) * (1 + scale[b]) + shift[b], one read of x and
// one write of out per element (mean/var from the row while it is in cache). The per-row mean and
// rstd (acc_t, (B,N)) are returned for the backward.
//
// Backward, with xhat = (x - mean) * rstd, a = 1 + scale[b], g = dout:
//   dshift[b] = sum_n g,  dscale[b] = sum_n g * xhat,
//   dx = rstd * (g*a - mean_d(g*a) - xhat * mean_d(g*a * xhat)).
// One task per (sample, token chunk): the first pass over a row gives the two row means and the
// chunk's dshift/dscale partials, the second (cached) pass writes dx. Reads x and dout, writes dx.
#include <torch/library.h>

#include <vector>

#include "adaln_rows.h"

namespace mdt {
namespace {

using adaln::acc_t;

template <typename T>
void forward_kernel(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps,
                    at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  using A = acc_t<T>;
  const int64_t N = x.size(1), D = x.size(2), rows = x.size(0) * N;
  const T* xp = x.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  A* mp = mean.data_ptr<A>();
  A* rp = rstd.data_ptr<A>();
  const bool stream = adaln::use_streaming(2 * x.numel() * int64_t{sizeof(T)});
  const adaln::ModRows<T> sh_rows(shift), sc_rows(scale);
  at::parallel_for(0, rows, adaln::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> a(D), sh(D), xbuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      if (b != cur) {
        sc_rows.load(b, A(1), a.data());
        sh_rows.load(b, A(0), sh.data());
        cur = b;
      }
      const A* __restrict__ xr = adaln::load_row(xp + r * D, D, xbuf.data());
      A m, rs;
      adaln::row_moments(xr, D, eps, m, rs);
      A* __restrict__ o = obuf.data();
      const A* __restrict__ ap = a.data();
      const A* __restrict__ sp = sh.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = (xr[d] - m) * rs * ap[d] + sp[d];
      adaln::store_row(op + r * D, o, D, stream);
      mp[r] = m;
      rp[r] = rs;
    }
    adaln::stream_fence();
  });
}

template <typename T>
void backward_kernel(const at::Tensor& g, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& mean,
                     const at::Tensor& rstd, at::Tensor& dx, at::Tensor& partial) {
  using A = acc_t<T>;
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), C = partial.size(2);
  const T* xp = x.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  const A* mp = mean.const_data_ptr<A>();
  const A* rp = rstd.const_data_ptr<A>();
  T* dxp = dx.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  const bool stream = adaln::use_streaming(3 * x.numel() * int64_t{sizeof(T)});
  const adaln::ModRows<T> sc_rows(scale);
  const A inv_d = A(1) / static_cast<A>(D);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> a(D), xbuf(D), gbuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / C, c = item % C;
      if (b != cur) {
        sc_rows.load(b, A(1), a.data());
        cur = b;
      }
      A* __restrict__ ps = part + item * D;
      A* __restrict__ pc = part + (B * C + item) * D;
      std::fill(ps, ps + D, A(0));
      std::fill(pc, pc + D, A(0));
      const A* __restrict__ ap = a.data();
      for (int64_t n = c * adaln::kTokenChunk; n < std::min(N, (c + 1) * adaln::kTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ xr = adaln::load_row(xp + r * D, D, xbuf.data());
        const A* __restrict__ gr = adaln::load_row(gp + r * D, D, gbuf.data());
        const A m = mp[r], rs = rp[r];
        const auto [c1, c2, rsd] = adaln::modulate_grad_row(xr, gr, ap, m, rs, D, inv_d, ps, pc);
        A* __restrict__ o = obuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = rsd * (gr[d] * ap[d] - c1 - (xr[d] - m) * rs * c2);
        adaln::store_row(dxp + r * D, o, D, stream);
      }
    }
    adaln::stream_fence();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_cpu(const at::Tensor& x_in, const at::Tensor& shift,
                                                                  const at::Tensor& scale, double eps) {
  adaln::check_adaln_modulate(x_in, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto out = at::empty({B, N, D}, x.options());
  auto mean = at::empty({B, N}, x.options().dtype(adaln::acc_dtype(x)));
  auto rstd = at::empty({B, N}, mean.options());
  if (B * N == 0) return {out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaln_modulate_cpu",
                                  [&] { forward_kernel<scalar_t>(x, shift, scale, eps, out, mean, rstd); });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_backward_cpu(const at::Tensor& grad,
                                                                           const at::Tensor& x_in,
                                                                           const at::Tensor& scale,
                                                                           const at::Tensor& mean,
                                                                           const at::Tensor& rstd) {
  adaln::check_adaln_modulate_backward(grad, x_in, scale, mean, rstd);
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const int64_t C = (N + adaln::kTokenChunk - 1) / adaln::kTokenChunk;
  auto dx = at::empty({B, N, D}, x.options());
  auto dshift = at::empty({B, D}, x.options());
  auto dscale = at::empty({B, D}, x.options());
  if (B * D == 0) return {dx, dshift, dscale};
  // partial[0] for dshift, partial[1] for dscale, each (B, C, D)
  auto partial = at::empty({2, B, C, D}, x.options().dtype(adaln::acc_dtype(x)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaln_modulate_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad.contiguous(), x, scale, mean.contiguous(), rstd.contiguous(), dx, partial);
    const auto* part = partial.const_data_ptr<acc_t<scalar_t>>();
    adaln::reduce_chunks(part, B, C, D, {dshift.data_ptr<scalar_t>(), dscale.data_ptr<scalar_t>()});
  });
  return {dx, dshift, dscale};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("adaln_modulate", &adaln_modulate_cpu);
  m.impl("adaln_modulate_backward", &adaln_modulate_backward_cpu);
}

}  // namespace mdt
