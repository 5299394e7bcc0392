// gated_residual CUDA kernels. Forward: out = x + gate[b] * y, one thread per element (grid-stride).
// Backward: one thread per (sample, token chunk, column); it walks the chunk's rows writing
// dy = gate * g and keeps its dgate partial sum(g * y) in a register; a second kernel adds the chunk
// partials in order (deterministic). Loads of a warp are consecutive columns: coalesced.
#include "gated_residual_kernels.h"

namespace mdt {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gated_residual_fwd_kernel(const T* __restrict__ x, const T* __restrict__ gate, const T* __restrict__ y,
                              T* __restrict__ out, int64_t total, int64_t N, int64_t D, int64_t g_sb, int64_t g_sd) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / D, d = i - row * D;
    const auto gt = to_acc(gate[(row / N) * g_sb + d * g_sd]);
    out[i] = from_acc<T>(to_acc(x[i]) + gt * to_acc(y[i]));
  }
}

template <typename T, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(kThreads)
    gated_residual_bwd_kernel(const T* __restrict__ g, const T* __restrict__ gate, const T* __restrict__ y,
                              T* __restrict__ dy, A* __restrict__ partial, int64_t N, int64_t D, int64_t C,
                              int64_t chunk, int64_t col_blocks, int64_t g_sb, int64_t g_sd) {
  const int64_t item = blockIdx.x / col_blocks;  // b * C + chunk
  const int64_t d = (blockIdx.x % col_blocks) * kThreads + threadIdx.x;
  if (d >= D) return;
  const int64_t b = item / C, n0 = (item % C) * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
  const A gt = to_acc(gate[b * g_sb + d * g_sd]);
  A acc = A(0);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t i = (b * N + n) * D + d;
    const A gv = to_acc(g[i]);
    dy[i] = from_acc<T>(gt * gv);
    acc += gv * to_acc(y[i]);
  }
  partial[item * D + d] = acc;
}

int64_t num_chunks(int64_t B, int64_t N) { return N > 0 ? cdiv(N, token_chunk(B, N)) : 0; }

}  // namespace

cudaError_t launch_gated_residual_fwd(DType dtype, const void* x, const void* gate, const void* y, void* out,
                                      int64_t B, int64_t N, int64_t D, int64_t gate_sb, int64_t gate_sd,
                                      cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    const int64_t total = B * N * D;
    if (total == 0) return cudaSuccess;
    const int64_t blocks = cdiv(total, kThreads) < (int64_t{1} << 20) ? cdiv(total, kThreads) : (int64_t{1} << 20);
    MDT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, gated_residual_fwd_kernel<T>)(
        static_cast<const T*>(x), static_cast<const T*>(gate), static_cast<const T*>(y), static_cast<T*>(out), total, N,
        D, gate_sb, gate_sd);
    return cudaGetLastError();
  });
}

int64_t gated_residual_bwd_workspace(int64_t B, int64_t N, int64_t D) { return B * num_chunks(B, N) * D; }

cudaError_t launch_gated_residual_bwd(DType dtype, const void* grad, const void* gate, const void* y, void* dy,
                                      void* dgate, void* workspace, int64_t B, int64_t N, int64_t D, int64_t gate_sb,
                                      int64_t gate_sd, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t chunk = token_chunk(B, N), C = num_chunks(B, N);
    A* part = static_cast<A*>(workspace);
    if (B * C * D > 0) {
      const int64_t col_blocks = cdiv(D, kThreads);
      MDT_LAUNCH(static_cast<unsigned>(B * C * col_blocks), kThreads, 0, stream, gated_residual_bwd_kernel<T>)(
          static_cast<const T*>(grad), static_cast<const T*>(gate), static_cast<const T*>(y), static_cast<T*>(dy),
          part, N, D, C, chunk, col_blocks, gate_sb, gate_sd);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return launch_sum_chunks<A, T>(part, Ptrs3<T>{{static_cast<T*>(dgate), nullptr, nullptr}}, 1, B, C, D, stream);
  });
}

}  // namespace mdt
