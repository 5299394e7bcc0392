// The adaLN family's CPU kernels (vec/adaln.h), compiled once per instruction set (csrc/cpu/isa.h).
// The math and the task split of each op are described at the top of its op file
// (csrc/cpu/adaln_modulate.cpp, residual_adaln_modulate.cpp, gated_residual.cpp).
//
// All math runs in acc_t (float for fp32/fp16/bf16, double for fp64) on contiguous rows of D elements,
// so the inner loops are plain arrays the compiler vectorizes for this instruction set: fp32/fp64 input
// rows are read in place, fp16/bf16 rows are converted (at::vec) into a per-thread buffer first; output
// rows are computed into a per-thread (L1) buffer and written by store_row (streaming stores for large
// fp32 calls).
//
// shift/scale/gate are (B,D) views that are usually strided (adaLN_modulation(c).chunk(6, dim=1), row
// stride 6D). They are read through their strides, one sample row at a time, into a per-thread acc_t
// buffer; nothing is copied to a contiguous (B,D) tensor.
//
// Per-sample sums over tokens (dshift, dscale, dgate) are accumulated per (sample, chunk of kAdalnTokenChunk
// tokens) into an acc_t partial buffer and the chunks are then added in chunk order: the result does
// not depend on the number of threads.
#include "adaln.h"

#include "rows.h"

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using rowwise::acc_t;

template <typename T>
void modulate_forward(const View& x, const View& shift, const View& scale, double eps,
                    const View& out, const View& mean, const View& rstd) {
  using A = acc_t<T>;
  const int64_t N = x.size(1), D = x.size(2), rows = x.size(0) * N;
  const T* xp = x.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  A* mp = mean.data_ptr<A>();
  A* rp = rstd.data_ptr<A>();
  const bool stream = rowwise::use_streaming(2 * x.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> sh_rows(shift), sc_rows(scale);
  at::parallel_for(0, rows, rowwise::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> a(D), sh(D), xbuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      if (b != cur) {
        sc_rows.load(b, A(1), a.data());
        sh_rows.load(b, A(0), sh.data());
        cur = b;
      }
      const A* __restrict__ xr = rowwise::load_row(xp + r * D, D, xbuf.data());
      A m, rs;
      rowwise::row_moments(xr, D, eps, m, rs);
      A* __restrict__ o = obuf.data();
      const A* __restrict__ ap = a.data();
      const A* __restrict__ sp = sh.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = (xr[d] - m) * rs * ap[d] + sp[d];
      rowwise::store_row(op + r * D, o, D, stream);
      mp[r] = m;
      rp[r] = rs;
    }
    rowwise::stream_fence();
  });
}

template <typename T>
void modulate_backward(const View& g, const View& x, const View& scale, const View& mean,
                     const View& rstd, const View& dx, const View& partial) {
  using A = acc_t<T>;
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), C = partial.size(2);
  const T* xp = x.const_data_ptr<T>();
  const T* gp = g.const_data_ptr<T>();
  const A* mp = mean.const_data_ptr<A>();
  const A* rp = rstd.const_data_ptr<A>();
  T* dxp = dx.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  const bool stream = rowwise::use_streaming(3 * x.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> sc_rows(scale);
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
      for (int64_t n = c * kAdalnTokenChunk; n < std::min(N, (c + 1) * kAdalnTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ xr = rowwise::load_row(xp + r * D, D, xbuf.data());
        const A* __restrict__ gr = rowwise::load_row(gp + r * D, D, gbuf.data());
        const A m = mp[r], rs = rp[r];
        const auto [c1, c2, rsd] = rowwise::modulate_grad_row(xr, gr, ap, m, rs, D, inv_d, ps, pc);
        A* __restrict__ o = obuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = rsd * (gr[d] * ap[d] - c1 - (xr[d] - m) * rs * c2);
        rowwise::store_row(dxp + r * D, o, D, stream);
      }
    }
    rowwise::stream_fence();
  });
}

template <typename T>
void residual_forward(const View& x, const View& gate, const View& y, const View& shift,
                    const View& scale, double eps, const View& h, const View& out, const View& mean,
                    const View& rstd) {
  using A = acc_t<T>;
  const int64_t N = x.size(1), D = x.size(2), rows = x.size(0) * N;
  const T* xp = x.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  T* hp = h.data_ptr<T>();
  T* op = out.data_ptr<T>();
  A* mp = mean.data_ptr<A>();
  A* rp = rstd.data_ptr<A>();
  const bool stream = rowwise::use_streaming(4 * x.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> gate_rows(gate), sh_rows(shift), sc_rows(scale);
  at::parallel_for(0, rows, rowwise::grain_rows(D), [&](int64_t begin, int64_t end) {
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
      const A* __restrict__ xr = rowwise::load_row(xp + r * D, D, xbuf.data());
      const A* __restrict__ yr = rowwise::load_row(yp + r * D, D, ybuf.data());
      const A* __restrict__ gtp = gt.data();
      // h as stored (rounded to T), so the statistics are those of the returned h.
      A* __restrict__ hr = hbuf.data();
      if constexpr (std::is_same_v<T, A>) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) hr[d] = xr[d] + gtp[d] * yr[d];
      } else {
        for (int64_t d = 0; d < D; ++d) hr[d] = static_cast<A>(static_cast<T>(xr[d] + gtp[d] * yr[d]));
      }
      rowwise::store_row(hp + r * D, hr, D, stream);
      A m, rs;
      rowwise::row_moments<A>(hr, D, eps, m, rs);
      A* __restrict__ o = obuf.data();
      const A* __restrict__ ap = a.data();
      const A* __restrict__ sp = sh.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = (hr[d] - m) * rs * ap[d] + sp[d];
      rowwise::store_row(op + r * D, o, D, stream);
      mp[r] = m;
      rp[r] = rs;
    }
    rowwise::stream_fence();
  });
}

template <typename T>
void residual_backward(const View& gh, const View& g, const View& h, const View& y,
                     const View& gate, const View& scale, const View& mean, const View& rstd,
                     const View& dx, const View& dy, const View& partial) {
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
  const bool stream = rowwise::use_streaming((has_gh ? 6 : 5) * h.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> gate_rows(gate), sc_rows(scale);
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
      for (int64_t n = c * kAdalnTokenChunk; n < std::min(N, (c + 1) * kAdalnTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ hr = rowwise::load_row(hp + r * D, D, hbuf.data());
        const A* __restrict__ gr = rowwise::load_row(gp + r * D, D, gbuf.data());
        const A m = mp[r], rs = rp[r];
        const auto [c1, c2, rsd] = rowwise::modulate_grad_row(hr, gr, ap, m, rs, D, inv_d, ps, pc);
        const A* __restrict__ ghr = has_gh ? rowwise::load_row(ghp + r * D, D, ghbuf.data()) : zeros.data();
        const A* __restrict__ yr = rowwise::load_row(yp + r * D, D, ybuf.data());
        A* __restrict__ ox = dxbuf.data();
        A* __restrict__ oy = dybuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          const A dh = rsd * (gr[d] * ap[d] - c1 - (hr[d] - m) * rs * c2) + ghr[d];
          ox[d] = dh;
          oy[d] = gtp[d] * dh;
          pg[d] += dh * yr[d];
        }
        rowwise::store_row(dxp + r * D, ox, D, stream);
        rowwise::store_row(dyp + r * D, oy, D, stream);
      }
    }
    rowwise::stream_fence();
  });
}

template <typename T>
void gated_forward(const View& x, const View& gate, const View& y, const View& out) {
  using A = acc_t<T>;
  const int64_t N = x.size(1), D = x.size(2), rows = x.size(0) * N;
  const T* xp = x.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  const bool stream = rowwise::use_streaming(3 * x.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> gate_rows(gate);
  at::parallel_for(0, rows, rowwise::grain_rows(D), [&](int64_t begin, int64_t end) {
    std::vector<A> gt(D), xbuf(D), ybuf(D), obuf(D);
    int64_t cur = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      if (b != cur) {
        gate_rows.load(b, A(0), gt.data());
        cur = b;
      }
      const A* __restrict__ xr = rowwise::load_row(xp + r * D, D, xbuf.data());
      const A* __restrict__ yr = rowwise::load_row(yp + r * D, D, ybuf.data());
      const A* __restrict__ gtp = gt.data();
      A* __restrict__ o = obuf.data();
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = xr[d] + gtp[d] * yr[d];
      rowwise::store_row(op + r * D, o, D, stream);
    }
    rowwise::stream_fence();
  });
}

template <typename T>
void gated_backward(const View& g, const View& gate, const View& y, const View& dy,
                     const View& partial) {
  using A = acc_t<T>;
  const int64_t B = y.size(0), N = y.size(1), D = y.size(2), C = partial.size(1);
  const T* gp = g.const_data_ptr<T>();
  const T* yp = y.const_data_ptr<T>();
  T* dyp = dy.data_ptr<T>();
  A* part = partial.data_ptr<A>();
  const bool stream = rowwise::use_streaming(3 * y.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> gate_rows(gate);
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
      for (int64_t n = c * kAdalnTokenChunk; n < std::min(N, (c + 1) * kAdalnTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ gr = rowwise::load_row(gp + r * D, D, gbuf.data());
        const A* __restrict__ yr = rowwise::load_row(yp + r * D, D, ybuf.data());
        A* __restrict__ o = obuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          o[d] = gtp[d] * gr[d];
          pg[d] += gr[d] * yr[d];
        }
        rowwise::store_row(dyp + r * D, o, D, stream);
      }
    }
    rowwise::stream_fence();
  });
}


// Entry points: the element type from the views.

void adaln_modulate_fwd_impl(const View& x, const View& shift, const View& scale, double eps, const View& out,
                             const View& mean, const View& rstd) {
  with_type(x.dtype, [&](auto t) { modulate_forward<decltype(t)>(x, shift, scale, eps, out, mean, rstd); });
}

void adaln_modulate_bwd_impl(const View& g, const View& x, const View& scale, const View& mean, const View& rstd,
                             const View& dx, const View& partial) {
  with_type(x.dtype, [&](auto t) { modulate_backward<decltype(t)>(g, x, scale, mean, rstd, dx, partial); });
}

void residual_fwd_impl(const View& x, const View& gate, const View& y, const View& shift, const View& scale,
                       double eps, const View& h, const View& out, const View& mean, const View& rstd) {
  with_type(x.dtype, [&](auto t) {
    residual_forward<decltype(t)>(x, gate, y, shift, scale, eps, h, out, mean, rstd);
  });
}

void residual_bwd_impl(const View& gh, const View& g, const View& h, const View& y, const View& gate,
                       const View& scale, const View& mean, const View& rstd, const View& dx, const View& dy,
                       const View& partial) {
  with_type(h.dtype, [&](auto t) {
    residual_backward<decltype(t)>(gh, g, h, y, gate, scale, mean, rstd, dx, dy, partial);
  });
}

void gated_fwd_impl(const View& x, const View& gate, const View& y, const View& out) {
  with_type(x.dtype, [&](auto t) { gated_forward<decltype(t)>(x, gate, y, out); });
}

void gated_bwd_impl(const View& g, const View& gate, const View& y, const View& dy, const View& partial) {
  with_type(y.dtype, [&](auto t) { gated_backward<decltype(t)>(g, gate, y, dy, partial); });
}

// partial (P, B, C, D) in acc_t of the outputs' type; outs: P views (B, D).
void reduce_chunks_impl(const View& partial, const View* outs, int64_t num_outs) {
  with_type(outs[0].dtype, [&](auto t) {
    using T = decltype(t);
    std::vector<T*> dst;
    for (int64_t p = 0; p < num_outs; ++p) dst.push_back(outs[p].data_ptr<T>());
    rowwise::reduce_chunks(partial.const_data_ptr<acc_t<T>>(), partial.size(1), partial.size(2), partial.size(3), dst);
  });
}

}  // namespace
}  // namespace CPU_CAPABILITY

MDT_DEFINE_KERNEL(AdalnModulateFwdFn, adaln_modulate_fwd, &adaln_modulate_fwd_impl)
MDT_DEFINE_KERNEL(AdalnModulateBwdFn, adaln_modulate_bwd, &adaln_modulate_bwd_impl)
MDT_DEFINE_KERNEL(ResidualAdalnFwdFn, residual_adaln_modulate_fwd, &residual_fwd_impl)
MDT_DEFINE_KERNEL(ResidualAdalnBwdFn, residual_adaln_modulate_bwd, &residual_bwd_impl)
MDT_DEFINE_KERNEL(GatedResidualFwdFn, gated_residual_fwd, &gated_fwd_impl)
MDT_DEFINE_KERNEL(GatedResidualBwdFn, gated_residual_bwd, &gated_bwd_impl)
MDT_DEFINE_KERNEL(ReduceChunksFn, reduce_chunks, &reduce_chunks_impl)

}  // namespace mdt::cpu
