// residual_adaln_modulate on CPU: h = x + gate[b] * y, out = LayerNorm_no_affine(h) * (1 + scale[b]) +
// shift[b], in one pass: read x and y, write h and out. The statistics are taken from h as stored (rounded
// to its dtype), so the result equals gated_residual followed by adaln_modulate.
//
// Backward with g = dout, gh = dh from the residual stream (may be absent), hhat = (h - mean) * rstd,
// a = 1 + scale[b]:
//   dshift[b] = sum_n g,  dscale[b] = sum_n g * hhat,
//   dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a * hhat)) + gh,
//   dx = dh,  dy = gate[b] * dh,  dgate[b] = sum_n dh * y.
// One task per (sample, token chunk), two passes over each (cached) row: reads h, y, g, gh; writes dx, dy.
#include <torch/library.h>

#include <optional>
#include <vector>

#include "adaln_rows.h"

namespace mdt {
namespace {

using adaln::acc_t;

template <typename T>
void forward_kernel(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
                    const at::Tensor& scale, double eps, at::Tensor& h, at::Tensor& out, at::Tensor& mean,
                    at::Tensor& rstd) {
  using A = acc_t<T>;
  const int64_t N = x.size(1), D = x.size(2), rows = x.size(0) * N;
  const T* xp = x.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  T* hp = h.data_ptr<T>();
  T* op = out.data_ptr<T>();
  A* mp = mean.data_ptr<A>();
  A* rp = rstd.data_ptr<A>();
  const bool stream = adaln::use_streaming(4 * x.numel() * int64_t{sizeof(T)});
  const adaln::ModRows<T> gate_rows(gate), sh_rows(shift), sc_rows(scale);
  at::parallel_for(0, rows, adaln::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> gt(D), a(D), sh(D), xbuf(D), ybuf(D), hbuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      if (b != cur) {
        gate_rows.load(b, A(0), gt.data());
        sc_rows.load(b, A(1), a.data());
        sh_rows.load(b, A(0), sh.data());
        cur = b;
      }
      const A* __restrict__ xr = adaln::load_row(xp + r * D, D, xbuf.data());
      const A* __restrict__ yr = adaln::load_row(yp + r * D, D, ybuf.data());
      const A* __restrict__ gtp = gt.data();
      // h as stored (rounded to T), so the statistics are those of the returned h.
      A* __restrict__ hr = hbuf.data();
      if constexpr (std::is_same_v<T, A>) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) hr[d] = xr[d] + gtp[d] * yr[d];
      } else {
        for (int64_t d = 0; d < D; ++d) hr[d] = static_cast<A>(static_cast<T>(xr[d] + gtp[d] * yr[d]));
      }
      adaln::store_row(hp + r * D, hr, D, stream);
      A m, rs;
      adaln::row_moments<A>(hr, D, eps, m, rs);
      A* __restrict__ o = obuf.data();
      const A* __restrict__ ap = a.data();
      const A* __restrict__ sp = sh.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = (hr[d] - m) * rs * ap[d] + sp[d];
      adaln::store_row(op + r * D, o, D, stream);
      mp[r] = m;
      rp[r] = rs;
    }
    adaln::stream_fence();
  });
}

template <typename T>
void backward_kernel(const at::Tensor& gh, const at::Tensor& g, const at::Tensor& h, const at::Tensor& y,
                     const at::Tensor& gate, const at::Tensor& scale, const at::Tensor& mean, const at::Tensor& rstd,
                     at::Tensor& dx, at::Tensor& dy, at::Tensor& partial) {
  using A = acc_t<T>;
  const int64_t B = h.size(0), N = h.size(1), D = h.size(2), C = partial.size(2);
  const bool has_gh = gh.defined();
  const T* hp = h.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  const T* ghp = has_gh ? gh.const_data_ptr<T>() : nullptr;
  const A* mp = mean.const_data_ptr<A>();
  const A* rp = rstd.const_data_ptr<A>();
  T* dxp = dx.data_ptr<T>();
  T* dyp = dy.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  const bool stream = adaln::use_streaming((has_gh ? 6 : 5) * h.numel() * int64_t{sizeof(T)});
  const adaln::ModRows<T> gate_rows(gate), sc_rows(scale);
  const A inv_d = A(1) / static_cast<A>(D);
  const int64_t plane = B * C * D;
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> gt(D), a(D), hbuf(D), ybuf(D), gbuf(D), ghbuf(D), dxbuf(D), dybuf(D);
    std::vector<A> zeros(has_gh ? 0 : D, A(0));
    int64_t cur = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / C, c = item % C;
      if (b != cur) {
        gate_rows.load(b, A(0), gt.data());
        sc_rows.load(b, A(1), a.data());
        cur = b;
      }
      A* __restrict__ ps = part + item * D;
      A* __restrict__ pc = part + plane + item * D;
      A* __restrict__ pg = part + 2 * plane + item * D;
      std::fill(ps, ps + D, A(0));
      std::fill(pc, pc + D, A(0));
      std::fill(pg, pg + D, A(0));
      const A* __restrict__ ap = a.data();
      const A* __restrict__ gtp = gt.data();
      for (int64_t n = c * adaln::kTokenChunk; n < std::min(N, (c + 1) * adaln::kTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ hr = adaln::load_row(hp + r * D, D, hbuf.data());
        const A* __restrict__ gr = adaln::load_row(gp + r * D, D, gbuf.data());
        const A m = mp[r], rs = rp[r];
        const auto [c1, c2, rsd] = adaln::modulate_grad_row(hr, gr, ap, m, rs, D, inv_d, ps, pc);
        const A* __restrict__ ghr = has_gh ? adaln::load_row(ghp + r * D, D, ghbuf.data()) : zeros.data();
        const A* __restrict__ yr = adaln::load_row(yp + r * D, D, ybuf.data());
        A* __restrict__ ox = dxbuf.data();
        A* __restrict__ oy = dybuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const A dh = rsd * (gr[d] * ap[d] - c1 - (hr[d] - m) * rs * c2) + ghr[d];
          ox[d] = dh;
          oy[d] = gtp[d] * dh;
          pg[d] += dh * yr[d];
        }
        adaln::store_row(dxp + r * D, ox, D, stream);
        adaln::store_row(dyp + r * D, oy, D, stream);
      }
    }
    adaln::stream_fence();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_cpu(
    const at::Tensor& x_in, const at::Tensor& gate, const at::Tensor& y, const at::Tensor& shift,
    const at::Tensor& scale, double eps) {
  adaln::check_residual_adaln_modulate(x_in, gate, y, shift, scale);
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  const auto x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  auto h = at::empty({B, N, D}, x.options());
  auto out = at::empty({B, N, D}, x.options());
  auto mean = at::empty({B, N}, x.options().dtype(adaln::acc_dtype(x)));
  auto rstd = at::empty({B, N}, mean.options());
  if (B * N == 0) return {h, out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "residual_adaln_modulate_cpu", [&] {
    forward_kernel<scalar_t>(x, gate, y.contiguous(), shift, scale, eps, h, out, mean, rstd);
  });
  return {h, out, mean, rstd};
}

// -> (dx, dgate, dy, dshift, dscale)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_adaln_modulate_backward_cpu(
    const std::optional<at::Tensor>& grad_h, const at::Tensor& grad_out, const at::Tensor& h_in, const at::Tensor& y,
    const at::Tensor& gate, const at::Tensor& scale, const at::Tensor& mean, const at::Tensor& rstd) {
  adaln::check_residual_adaln_modulate_backward(grad_h, grad_out, h_in, y, gate, scale, mean, rstd);
  const bool has_gh = grad_h.has_value() && grad_h->defined();
  const auto h = h_in.contiguous();
  const int64_t B = h.size(0), N = h.size(1), D = h.size(2);
  const int64_t C = (N + adaln::kTokenChunk - 1) / adaln::kTokenChunk;
  auto dx = at::empty({B, N, D}, h.options());
  auto dy = at::empty({B, N, D}, h.options());
  auto dgate = at::empty({B, D}, h.options());
  auto dshift = at::empty({B, D}, h.options());
  auto dscale = at::empty({B, D}, h.options());
  if (B * D == 0) return {dx, dgate, dy, dshift, dscale};
  // partial[0] dshift, [1] dscale, [2] dgate, each (B, C, D)
  auto partial = at::empty({3, B, C, D}, h.options().dtype(adaln::acc_dtype(h)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "residual_adaln_modulate_backward_cpu",
                                  [&] {
    const auto gh = has_gh ? grad_h->contiguous() : at::Tensor();
    backward_kernel<scalar_t>(gh, grad_out.contiguous(), h, y.contiguous(), gate, scale, mean.contiguous(),
                              rstd.contiguous(), dx, dy, partial);
    const auto* part = partial.const_data_ptr<acc_t<scalar_t>>();
    adaln::reduce_chunks(part, B, C, D,
                         {dshift.data_ptr<scalar_t>(), dscale.data_ptr<scalar_t>(), dgate.data_ptr<scalar_t>()});
  });
  return {dx, dgate, dy, dshift, dscale};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("residual_adaln_modulate", &residual_adaln_modulate_cpu);
  m.impl("residual_adaln_modulate_backward", &residual_adaln_modulate_backward_cpu);
}

}  // namespace mdt
