// The adaLN family's CUDA kernels (adaln_kernels.h).
// Modulate part, forward: one warp per row (B*N rows of D); with the residual part the warp first writes
// h = x + gate*y (rounded to T, so the statistics are those of the returned h); mean and variance by warp
// shuffles (two passes; the second re-reads the row from L1/L2), then out = (h-mean)*rstd*(1+scale)+shift.
// Modulate part, backward: one warp per (sample, chunk of tokens); per row the warp sums g*a and g*a*hhat
// for dh, and every lane accumulates the dshift/dscale (and dgate) partials of its own columns
// (lane-private, so no synchronisation), in shared memory when they fit, else directly in the chunk's slot
// of the workspace. The residual part alone (gated_residual) is elementwise: forward one thread per element
// (grid-stride); backward one thread per (sample, token chunk, column), walking the chunk's rows writing
// dy = gate * g and keeping its dgate partial sum(g * y) in a register (loads of a warp are consecutive
// columns: coalesced). A second kernel adds the chunk partials in order: deterministic.
#include "adaln_kernels.h"

namespace mdt {
namespace {

constexpr int kMaxWarps = 4;
constexpr size_t kSmemLimit = 48 * 1024;  // dynamic shared memory without an opt-in

template <typename T, bool kResidual, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(32 * kMaxWarps) adaln_fwd_kernel(AdalnFwdArgs<T> p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= p.B * p.N) return;
  const int64_t b = row / p.N, D = p.D;
  const T* __restrict__ xr = p.x + row * D;
  A s = A(0);
  if constexpr (kResidual) {
    const T* __restrict__ yr = p.y + row * D;
    const T* __restrict__ gr = p.gate.row(b);
    const int64_t g_sd = p.gate.stride_d;
    T* __restrict__ hr = p.h + row * D;
    for (int64_t d = lane; d < D; d += 32) {
      const T hv = from_acc<T>(to_acc(xr[d]) + to_acc(gr[d * g_sd]) * to_acc(yr[d]));
      hr[d] = hv;
      s += to_acc(hv);
    }
    xr = hr;
  } else {
    for (int64_t d = lane; d < D; d += 32) s += to_acc(xr[d]);
  }
  warp_modulate_row(xr, s, D, lane, p.eps, p.shift.row(b), p.shift.stride_d, p.scale.row(b), p.scale.stride_d,
                    p.out + row * D, p.mean + row, p.rstd + row);
}

// hhat = (h - mean) * rstd, a = 1 + scale, g = dout:
//   dshift = sum_n g, dscale = sum_n g*hhat, dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a*hhat));
// with the residual part: dh += gh, dx = dh, dy = gate * dh, dgate = sum_n dh * y.
template <typename T, bool kResidual, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(32 * kMaxWarps)
    adaln_bwd_kernel(AdalnBwdArgs<T> p, int64_t C, int64_t chunk, bool smem_acc) {
  MDT_DYNAMIC_SHARED(unsigned char, smem_raw);
  constexpr int kPlanes = kResidual ? 3 : 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t B = p.B, N = p.N, D = p.D;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + warp;  // b * C + chunk
  if (item >= B * C) return;
  const int64_t b = item / C, n0 = (item % C) * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
  const int64_t plane = B * C * D;
  A* partial = p.workspace;
  A* ps = smem_acc ? reinterpret_cast<A*>(smem_raw) + warp * kPlanes * D : partial + item * D;
  A* pc = smem_acc ? ps + D : partial + plane + item * D;
  A* pg = !kResidual ? nullptr : smem_acc ? ps + 2 * D : partial + 2 * plane + item * D;
  for (int64_t d = lane; d < D; d += 32) {
    ps[d] = pc[d] = A(0);
    if constexpr (kResidual) pg[d] = A(0);
  }
  const T* __restrict__ scr = p.scale.row(b);
  const T* __restrict__ gtr = p.gate.row(b);
  const int64_t sc_sd = p.scale.stride_d, g_sd = p.gate.stride_d;
  const A inv_d = A(1) / static_cast<A>(D);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t row = b * N + n;
    const A m = p.mean[row], rs = p.rstd[row];
    const T* __restrict__ xr = p.x + row * D;
    const T* __restrict__ gr = p.g + row * D;
    A s1 = A(0), s2 = A(0);
    for (int64_t d = lane; d < D; d += 32) {
      const A xh = (to_acc(xr[d]) - m) * rs;
      const A gv = to_acc(gr[d]);
      const A ga = gv * (A(1) + to_acc(scr[d * sc_sd]));
      s1 += ga;
      s2 += ga * xh;
      ps[d] += gv;
      pc[d] += gv * xh;
    }
    const A c1 = warp_sum(s1) * inv_d, c2 = warp_sum(s2) * inv_d;
    const A rsd = D > 1 ? rs : A(0);  // one feature: the normalised value does not depend on the input
    const T* ghr = kResidual && p.gh != nullptr ? p.gh + row * D : nullptr;
    const T* yr = kResidual ? p.y + row * D : nullptr;
    for (int64_t d = lane; d < D; d += 32) {
      const A xh = (to_acc(xr[d]) - m) * rs;
      const A ga = to_acc(gr[d]) * (A(1) + to_acc(scr[d * sc_sd]));
      A dh = rsd * (ga - c1 - xh * c2);
      if constexpr (kResidual) {
        if (ghr != nullptr) dh += to_acc(ghr[d]);
        p.dy[row * D + d] = from_acc<T>(to_acc(gtr[d * g_sd]) * dh);
        pg[d] += dh * to_acc(yr[d]);
      }
      p.dx[row * D + d] = from_acc<T>(dh);
    }
  }
  if (smem_acc) {
    for (int64_t d = lane; d < D; d += 32) {
      partial[item * D + d] = ps[d];
      partial[plane + item * D + d] = pc[d];
      if constexpr (kResidual) partial[2 * plane + item * D + d] = pg[d];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gated_residual_fwd_kernel(AdalnFwdArgs<T> p) {
  const int64_t total = p.B * p.N * p.D, N = p.N, D = p.D;
  const T* __restrict__ x = p.x;
  const T* __restrict__ y = p.y;
  T* __restrict__ out = p.out;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / D, d = i - row * D;
    const auto gt = to_acc(p.gate.row(row / N)[d * p.gate.stride_d]);
    out[i] = from_acc<T>(to_acc(x[i]) + gt * to_acc(y[i]));
  }
}

template <typename T, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(kThreads)
    gated_residual_bwd_kernel(AdalnBwdArgs<T> p, int64_t C, int64_t chunk, int64_t col_blocks) {
  const int64_t N = p.N, D = p.D;
  const int64_t item = blockIdx.x / col_blocks;  // b * C + chunk
  const int64_t d = (blockIdx.x % col_blocks) * kThreads + threadIdx.x;
  if (d >= D) return;
  const int64_t b = item / C, n0 = (item % C) * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
  const T* __restrict__ g = p.g;
  const T* __restrict__ y = p.y;
  T* __restrict__ dy = p.dy;
  const A gt = to_acc(p.gate.row(b)[d * p.gate.stride_d]);
  A acc = A(0);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t i = (b * N + n) * D + d;
    const A gv = to_acc(g[i]);
    dy[i] = from_acc<T>(gt * gv);
    acc += gv * to_acc(y[i]);
  }
  p.workspace[item * D + d] = acc;
}

int64_t num_chunks(int64_t B, int64_t N) { return N > 0 ? cdiv(N, token_chunk(B, N)) : 0; }

}  // namespace

template <typename T>
cudaError_t launch_adaln_fwd(const AdalnFwdArgs<T>& p, cudaStream_t stream) {
  const int64_t rows = p.B * p.N;
  if (p.scale.data == nullptr) {  // the residual part alone
    const int64_t total = rows * p.D;
    if (total == 0) return cudaSuccess;
    const int64_t blocks = cdiv(total, kThreads) < (int64_t{1} << 20) ? cdiv(total, kThreads) : (int64_t{1} << 20);
    MDT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, gated_residual_fwd_kernel<T>)(p);
    return cudaGetLastError();
  }
  if (rows == 0) return cudaSuccess;
  const unsigned grid = static_cast<unsigned>(cdiv(rows, kMaxWarps));
  if (p.gate.data != nullptr) {
    MDT_LAUNCH(grid, 32 * kMaxWarps, 0, stream, adaln_fwd_kernel<T, true>)(p);
  } else {
    MDT_LAUNCH(grid, 32 * kMaxWarps, 0, stream, adaln_fwd_kernel<T, false>)(p);
  }
  return cudaGetLastError();
}

int64_t adaln_bwd_workspace(int64_t B, int64_t N, int64_t D, int64_t planes) {
  return planes * B * num_chunks(B, N) * D;
}

template <typename T>
cudaError_t launch_adaln_bwd(const AdalnBwdArgs<T>& p, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const bool residual = p.gate.data != nullptr, modulate = p.scale.data != nullptr;
  const int64_t B = p.B, N = p.N, D = p.D, chunk = token_chunk(B, N), C = num_chunks(B, N);
  const int64_t planes = (modulate ? 2 : 0) + (residual ? 1 : 0);
  if (B * C * D > 0) {
    if (!modulate) {
      const int64_t col_blocks = cdiv(D, kThreads);
      MDT_LAUNCH(static_cast<unsigned>(B * C * col_blocks), kThreads, 0, stream, gated_residual_bwd_kernel<T>)(
          p, C, chunk, col_blocks);
    } else {
      // Warps per block: as many (up to 4) as have room for their partials in shared memory.
      const size_t per_warp = static_cast<size_t>(planes) * static_cast<size_t>(D) * sizeof(A);
      const int fit = static_cast<int>(kSmemLimit / per_warp);
      const bool smem_acc = fit >= 1;
      const int warps = smem_acc ? (fit < kMaxWarps ? fit : kMaxWarps) : kMaxWarps;
      const unsigned grid = static_cast<unsigned>(cdiv(B * C, warps));
      const size_t smem = smem_acc ? warps * per_warp : 0;
      if (residual) {
        MDT_LAUNCH(grid, 32 * warps, smem, stream, adaln_bwd_kernel<T, true>)(p, C, chunk, smem_acc);
      } else {
        MDT_LAUNCH(grid, 32 * warps, smem, stream, adaln_bwd_kernel<T, false>)(p, C, chunk, smem_acc);
      }
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  // planes of the workspace: dshift, dscale (modulate part), dgate (residual part)
  const Ptrs3<T> outs = modulate ? Ptrs3<T>{{p.dshift, p.dscale, p.dgate}} : Ptrs3<T>{{p.dgate, nullptr, nullptr}};
  return launch_sum_chunks<A, T>(p.workspace, outs, planes, B, C, D, stream);
}

#define MDT_INSTANTIATE_ADALN(T)                                                         \
  template cudaError_t launch_adaln_fwd<T>(const AdalnFwdArgs<T>&, cudaStream_t stream); \
  template cudaError_t launch_adaln_bwd<T>(const AdalnBwdArgs<T>&, cudaStream_t stream);
MDT_FOR_EACH_FLOAT(MDT_INSTANTIATE_ADALN)

}  // namespace mdt
