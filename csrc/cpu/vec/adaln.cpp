// The adaLN family's CPU kernels (vec/adaln.h): one templated forward and one backward, whose
// compile-time flags kResidual and kModulate select the parts an op runs. Compiled once per instruction
// set (csrc/cpu/isa.h). The ops' checks and allocation are in csrc/cpu/adaln.cpp.
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

#include <type_traits>

#include "rows.h"

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using rowwise::acc_t;

// kResidual: h = x + gate[b] * y;  kModulate: out = (h - mean) * rstd * (1 + scale[b]) + shift[b].
template <typename T, bool kResidual, bool kModulate>
void forward(const AdalnFwdArgs& args) {
  using A = acc_t<T>;
  const int64_t N = args.x.size(1), D = args.x.size(2), rows = args.x.size(0) * N;
  const T* xp = args.x.const_data_ptr<T>();
  const T* yp = args.y.const_data_ptr<T>();
  T* hp = kResidual && kModulate ? args.h.data_ptr<T>() : args.out.data_ptr<T>();
  T* op = args.out.data_ptr<T>();
  A* mp = args.mean.data_ptr<A>();
  A* rp = args.rstd.data_ptr<A>();
  // Rows streamed: x, out; y and h for the residual part (which alone writes h as out).
  const int64_t streamed = (kResidual ? 3 : 1) + (kModulate ? 1 : 0);
  const bool stream = rowwise::use_streaming(streamed * args.x.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> gate_rows(args.gate), sh_rows(args.shift), sc_rows(args.scale);
  const double eps = args.eps;
  at::parallel_for(0, rows, rowwise::grain_rows(D), [&](int64_t begin, int64_t end) {
    const int64_t Dr = kResidual ? D : 0, Dm = kModulate ? D : 0;
    std::vector<A> gt(Dr), ybuf(Dr), hbuf(Dr), a(Dm), sh(Dm), xbuf(D), obuf(Dm);
    int64_t cur = -1;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N;
      if (b != cur) {
        if constexpr (kResidual) gate_rows.load(b, A(0), gt.data());
        if constexpr (kModulate) {
          sc_rows.load(b, A(1), a.data());
          sh_rows.load(b, A(0), sh.data());
        }
        cur = b;
      }
      const A* xr = rowwise::load_row(xp + r * D, D, xbuf.data());
      if constexpr (kResidual) {
        const A* __restrict__ x_r = xr;
        const A* __restrict__ yr = rowwise::load_row(yp + r * D, D, ybuf.data());
        const A* __restrict__ gtp = gt.data();
        A* __restrict__ hr = hbuf.data();
        if constexpr (std::is_same_v<T, A> || !kModulate) {
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) hr[d] = x_r[d] + gtp[d] * yr[d];
        } else {
          // h as stored (rounded to T), so the statistics are those of the returned h.
          for (int64_t d = 0; d < D; ++d) hr[d] = static_cast<A>(static_cast<T>(x_r[d] + gtp[d] * yr[d]));
        }
        rowwise::store_row(hp + r * D, hr, D, stream);
        xr = hr;  // the modulate part's input
      }
      if constexpr (kModulate) {
        const A* __restrict__ hr = xr;
        A m, rs;
        rowwise::row_moments<A>(hr, D, eps, m, rs);
        A* __restrict__ o = obuf.data();
        const A* __restrict__ ap = a.data();
        const A* __restrict__ sp = sh.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = (hr[d] - m) * rs * ap[d] + sp[d];
        rowwise::store_row(op + r * D, o, D, stream);
        if (mp != nullptr) {  // null: the inference form keeps no statistics
          mp[r] = m;
          rp[r] = rs;
        }
      }
    }
    rowwise::stream_fence();
  });
}

// g = dout. Modulate part (input xn = x or h, xhat = (xn - mean) * rstd, a = 1 + scale[b]):
//   dshift[b] = sum_n g,  dscale[b] = sum_n g * xhat,
//   dh = rstd * (g*a - mean_d(g*a) - xhat * mean_d(g*a * xhat)) (+ gh, the residual stream's gradient).
// Residual part (dh = g when it runs alone): dx = dh,  dy = gate[b] * dh,  dgate[b] = sum_n dh * y.
// One task per (sample, token chunk): per row, one pass for the modulate part's row means and dshift/
// dscale partials, a second (cached) pass for the outputs and the dgate partial.
template <typename T, bool kResidual, bool kModulate>
void backward(const AdalnBwdArgs& args) {
  using A = acc_t<T>;
  const View& rows_of = kModulate ? args.x : args.y;
  const int64_t B = rows_of.size(0), N = rows_of.size(1), D = rows_of.size(2), C = args.partial.size(2);
  const bool has_gh = kResidual && kModulate && args.gh.defined();
  const T* gp = args.g.const_data_ptr<T>();
  const T* xp = args.x.const_data_ptr<T>();
  const T* yp = args.y.const_data_ptr<T>();
  const T* ghp = args.gh.const_data_ptr<T>();
  const A* mp = args.mean.const_data_ptr<A>();
  const A* rp = args.rstd.const_data_ptr<A>();
  T* dxp = args.dx.data_ptr<T>();
  T* dyp = args.dy.data_ptr<T>();
  A* part = args.partial.data_ptr<A>();
  // Rows streamed: g; x and dx for the modulate part; y and dy for the residual part; gh.
  const int64_t streamed = 1 + (kModulate ? 2 : 0) + (kResidual ? 2 : 0) + (has_gh ? 1 : 0);
  const bool stream = rowwise::use_streaming(streamed * rows_of.numel() * int64_t{sizeof(T)});
  const rowwise::ModRows<T> gate_rows(args.gate), sc_rows(args.scale);
  const A inv_d = A(1) / static_cast<A>(D);
  const int64_t plane = B * C * D;
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    const int64_t Dr = kResidual ? D : 0, Dm = kModulate ? D : 0;
    std::vector<A> gt(Dr), a(Dm), xbuf(Dm), ybuf(Dr), gbuf(D), ghbuf(has_gh ? D : 0), dxbuf(Dm), dybuf(Dr);
    std::vector<A> zeros(kResidual && kModulate && !has_gh ? D : 0, A(0));
    int64_t cur = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / C, c = item % C;
      if (b != cur) {
        if constexpr (kResidual) gate_rows.load(b, A(0), gt.data());
        if constexpr (kModulate) sc_rows.load(b, A(1), a.data());
        cur = b;
      }
      A* __restrict__ ps = part + item * D;
      A* __restrict__ pc = part + plane + item * D;
      A* __restrict__ pg = part + (kModulate ? 2 : 0) * plane + item * D;
      if constexpr (kModulate) {
        std::fill(ps, ps + D, A(0));
        std::fill(pc, pc + D, A(0));
      }
      if constexpr (kResidual) std::fill(pg, pg + D, A(0));
      const A* __restrict__ ap = a.data();
      const A* __restrict__ gtp = gt.data();
      for (int64_t n = c * kAdalnTokenChunk; n < std::min(N, (c + 1) * kAdalnTokenChunk); ++n) {
        const int64_t r = b * N + n;
        const A* __restrict__ gr = rowwise::load_row(gp + r * D, D, gbuf.data());
        const A* __restrict__ xr = nullptr;
        const A* __restrict__ ghr = nullptr;
        const A* __restrict__ yr = nullptr;
        A m = 0, rs = 0, c1 = 0, c2 = 0, rsd = 0;
        if constexpr (kModulate) {
          xr = rowwise::load_row(xp + r * D, D, xbuf.data());
          m = mp[r];
          rs = rp[r];
          const auto row = rowwise::modulate_grad_row(xr, gr, ap, m, rs, D, inv_d, ps, pc);
          c1 = row.c1;
          c2 = row.c2;
          rsd = row.rsd;
        }
        if constexpr (kResidual && kModulate) ghr = has_gh ? rowwise::load_row(ghp + r * D, D, ghbuf.data()) : zeros.data();
        if constexpr (kResidual) yr = rowwise::load_row(yp + r * D, D, ybuf.data());
        A* __restrict__ ox = dxbuf.data();
        A* __restrict__ oy = dybuf.data();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          A dh;
          if constexpr (!kModulate) {
            dh = gr[d];
          } else if constexpr (kResidual) {
            dh = rsd * (gr[d] * ap[d] - c1 - (xr[d] - m) * rs * c2) + ghr[d];
          } else {
            dh = rsd * (gr[d] * ap[d] - c1 - (xr[d] - m) * rs * c2);
          }
          if constexpr (kModulate) ox[d] = dh;
          if constexpr (kResidual) {
            oy[d] = gtp[d] * dh;
            pg[d] += dh * yr[d];
          }
        }
        if constexpr (kModulate) rowwise::store_row(dxp + r * D, ox, D, stream);
        if constexpr (kResidual) rowwise::store_row(dyp + r * D, oy, D, stream);
      }
    }
    rowwise::stream_fence();
  });
}

// Entry points: the element type from the views, the parts from the views that are defined (gate for
// the residual part, scale for the modulate part): f(T{}, kResidual, kModulate) as std::bool_constant.
template <typename Args, typename F>
void with_parts(const Args& args, Dtype dtype, F&& f) {
  const bool residual = args.gate.defined(), modulate = args.scale.defined();
  with_type(dtype, [&](auto t) {
    if (residual && modulate) {
      f(t, std::true_type{}, std::true_type{});
    } else if (residual) {
      f(t, std::true_type{}, std::false_type{});
    } else {
      f(t, std::false_type{}, std::true_type{});
    }
  });
}

void adaln_fwd_impl(const AdalnFwdArgs& args) {
  with_parts(args, args.x.dtype, [&](auto t, auto residual, auto modulate) {
    forward<decltype(t), decltype(residual)::value, decltype(modulate)::value>(args);
  });
}

void adaln_bwd_impl(const AdalnBwdArgs& args) {
  with_parts(args, args.g.dtype, [&](auto t, auto residual, auto modulate) {
    backward<decltype(t), decltype(residual)::value, decltype(modulate)::value>(args);
  });
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

MDT_DEFINE_KERNEL(AdalnFwdFn, adaln_fwd, &adaln_fwd_impl)
MDT_DEFINE_KERNEL(AdalnBwdFn, adaln_bwd, &adaln_bwd_impl)
MDT_DEFINE_KERNEL(ReduceChunksFn, reduce_chunks, &reduce_chunks_impl)

}  // namespace mdt::cpu
