// residual_adaln_modulate CUDA kernels, laid out as adaln_modulate_kernels.cu. Forward: one warp per row;
// the first pass writes h = x + gate*y (rounded to T) and sums it, the later passes re-read h (written
// by the same lane, so coherent) for the variance and out. Backward: one warp per (sample, token chunk)
// with lane-private dshift/dscale/dgate partials (shared memory when they fit, else the workspace slot),
// then an in-order sum over chunks:
//   hhat = (h-mean)*rstd, a = 1+scale, g = dout, gh = dh from the residual stream,
//   dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a*hhat)) + gh,
//   dx = dh, dy = gate*dh, dgate = sum_n dh*y, dshift = sum_n g, dscale = sum_n g*hhat.
#include "residual_adaln_modulate_kernels.h"

namespace mdt {
namespace {

constexpr int kMaxWarps = 4;
constexpr size_t kSmemLimit = 48 * 1024;  // dynamic shared memory without an opt-in

template <typename T, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(32 * kMaxWarps) residual_adaln_fwd_kernel(
    const T* __restrict__ x, const T* __restrict__ gate, const T* __restrict__ y, const T* __restrict__ shift,
    const T* __restrict__ scale, T* __restrict__ h, T* __restrict__ out, A* __restrict__ mean, A* __restrict__ rstd,
    int64_t rows, int64_t N, int64_t D, int64_t g_sb, int64_t g_sd, int64_t sh_sb, int64_t sh_sd, int64_t sc_sb,
    int64_t sc_sd, double eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t b = row / N;
  const T* xr = x + row * D;
  const T* yr = y + row * D;
  const T* gr = gate + b * g_sb;
  T* hr = h + row * D;
  A s = A(0);
  for (int64_t d = lane; d < D; d += 32) {
    const T hv = from_acc<T>(to_acc(xr[d]) + to_acc(gr[d * g_sd]) * to_acc(yr[d]));
    hr[d] = hv;
    s += to_acc(hv);
  }
  warp_modulate_row(hr, s, D, lane, eps, shift + b * sh_sb, sh_sd, scale + b * sc_sb, sc_sd, out + row * D,
                    mean + row, rstd + row);
}

template <typename T, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(32 * kMaxWarps) residual_adaln_bwd_kernel(
    const T* __restrict__ gh, const T* __restrict__ g, const T* __restrict__ h, const T* __restrict__ y,
    const T* __restrict__ gate, const T* __restrict__ scale, const A* __restrict__ mean, const A* __restrict__ rstd,
    T* __restrict__ dx, T* __restrict__ dy, A* __restrict__ partial, int64_t B, int64_t N, int64_t D, int64_t C,
    int64_t chunk, int64_t g_sb, int64_t g_sd, int64_t sc_sb, int64_t sc_sd, bool smem_acc) {
  MDT_DYNAMIC_SHARED(unsigned char, smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + warp;  // b * C + chunk
  if (item >= B * C) return;
  const int64_t b = item / C, n0 = (item % C) * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
  const int64_t plane = B * C * D;
  A* ps = smem_acc ? reinterpret_cast<A*>(smem_raw) + warp * 3 * D : partial + item * D;
  A* pc = smem_acc ? ps + D : partial + plane + item * D;
  A* pg = smem_acc ? ps + 2 * D : partial + 2 * plane + item * D;
  for (int64_t d = lane; d < D; d += 32) ps[d] = pc[d] = pg[d] = A(0);
  const T* scr = scale + b * sc_sb;
  const T* gtr = gate + b * g_sb;
  const A inv_d = A(1) / static_cast<A>(D);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t row = b * N + n;
    const A m = mean[row], rs = rstd[row];
    const T* hr = h + row * D;
    const T* gr = g + row * D;
    A s1 = A(0), s2 = A(0);
    for (int64_t d = lane; d < D; d += 32) {
      const A hh = (to_acc(hr[d]) - m) * rs;
      const A gv = to_acc(gr[d]);
      const A ga = gv * (A(1) + to_acc(scr[d * sc_sd]));
      s1 += ga;
      s2 += ga * hh;
      ps[d] += gv;
      pc[d] += gv * hh;
    }
    const A c1 = warp_sum(s1) * inv_d, c2 = warp_sum(s2) * inv_d;
    const A rsd = D > 1 ? rs : A(0);  // one feature: the normalised value does not depend on h
    const T* ghr = gh != nullptr ? gh + row * D : nullptr;
    const T* yr = y + row * D;
    for (int64_t d = lane; d < D; d += 32) {
      const A hh = (to_acc(hr[d]) - m) * rs;
      const A ga = to_acc(gr[d]) * (A(1) + to_acc(scr[d * sc_sd]));
      A dh = rsd * (ga - c1 - hh * c2);
      if (ghr != nullptr) dh += to_acc(ghr[d]);
      dx[row * D + d] = from_acc<T>(dh);
      dy[row * D + d] = from_acc<T>(to_acc(gtr[d * g_sd]) * dh);
      pg[d] += dh * to_acc(yr[d]);
    }
  }
  if (smem_acc) {
    for (int64_t d = lane; d < D; d += 32) {
      partial[item * D + d] = ps[d];
      partial[plane + item * D + d] = pc[d];
      partial[2 * plane + item * D + d] = pg[d];
    }
  }
}

int64_t num_chunks(int64_t B, int64_t N) { return N > 0 ? cdiv(N, token_chunk(B, N)) : 0; }

}  // namespace

cudaError_t launch_residual_adaln_modulate_fwd(DType dtype, const void* x, const void* gate, const void* y,
                                               const void* shift, const void* scale, void* h, void* out, void* mean,
                                               void* rstd, int64_t B, int64_t N, int64_t D, int64_t gate_sb,
                                               int64_t gate_sd, int64_t shift_sb, int64_t shift_sd, int64_t scale_sb,
                                               int64_t scale_sd, double eps, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t rows = B * N;
    if (rows == 0) return cudaSuccess;
    MDT_LAUNCH(static_cast<unsigned>(cdiv(rows, kMaxWarps)), 32 * kMaxWarps, 0, stream, residual_adaln_fwd_kernel<T>)(
        static_cast<const T*>(x), static_cast<const T*>(gate), static_cast<const T*>(y), static_cast<const T*>(shift),
        static_cast<const T*>(scale), static_cast<T*>(h), static_cast<T*>(out), static_cast<A*>(mean),
        static_cast<A*>(rstd), rows, N, D, gate_sb, gate_sd, shift_sb, shift_sd, scale_sb, scale_sd, eps);
    return cudaGetLastError();
  });
}

int64_t residual_adaln_modulate_bwd_workspace(int64_t B, int64_t N, int64_t D) {
  return 3 * B * num_chunks(B, N) * D;
}

cudaError_t launch_residual_adaln_modulate_bwd(DType dtype, const void* grad_h, const void* grad_out, const void* h,
                                               const void* y, const void* gate, const void* scale, const void* mean,
                                               const void* rstd, void* dx, void* dgate, void* dy, void* dshift,
                                               void* dscale, void* workspace, int64_t B, int64_t N, int64_t D,
                                               int64_t gate_sb, int64_t gate_sd, int64_t scale_sb, int64_t scale_sd,
                                               cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t chunk = token_chunk(B, N), C = num_chunks(B, N);
    A* part = static_cast<A*>(workspace);
    if (B * C * D > 0) {
      const size_t per_warp = 3 * static_cast<size_t>(D) * sizeof(A);
      const int fit = static_cast<int>(kSmemLimit / per_warp);
      const bool smem_acc = fit >= 1;
      const int warps = smem_acc ? (fit < kMaxWarps ? fit : kMaxWarps) : kMaxWarps;
      MDT_LAUNCH(static_cast<unsigned>(cdiv(B * C, warps)), 32 * warps,
                                     smem_acc ? warps * per_warp : 0, stream, residual_adaln_bwd_kernel<T>)(
          static_cast<const T*>(grad_h), static_cast<const T*>(grad_out), static_cast<const T*>(h),
          static_cast<const T*>(y), static_cast<const T*>(gate), static_cast<const T*>(scale),
          static_cast<const A*>(mean), static_cast<const A*>(rstd), static_cast<T*>(dx), static_cast<T*>(dy), part, B,
          N, D, C, chunk, gate_sb, gate_sd, scale_sb, scale_sd, smem_acc);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    // planes of the workspace: dshift, dscale, dgate
    return launch_sum_chunks<A, T>(
        part, Ptrs3<T>{{static_cast<T*>(dshift), static_cast<T*>(dscale), static_cast<T*>(dgate)}}, 3, B, C, D, stream);
  });
}

}  // namespace mdt
