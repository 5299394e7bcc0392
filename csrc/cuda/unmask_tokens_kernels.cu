// unmask_tokens on CUDA: an inverse-map scatter (B*K threads, distinctness checked with atomicExch),
// then one block per output row. Backward: one thread per (n, d) loops over the batch in order.
#include "unmask_tokens_kernels.h"

#include <algorithm>

namespace mdt {
namespace {

__global__ void inverse_map_kernel(const int64_t* __restrict__ ids, int32_t* __restrict__ inv, int64_t B, int64_t N,
                                   int64_t K) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= B * K) return;
  const int64_t n = ids[e];
  MDT_DEVICE_CHECK(n >= 0 && n < N);                                            // ids_keep in range
  const int32_t previous = atomicExch(inv + e / K * N + n, static_cast<int32_t>(e % K));
  MDT_DEVICE_CHECK(previous == -1);                                             // distinct per row
}

template <typename T>
__global__ void unmask_rows_kernel(const T* __restrict__ xk, const int32_t* __restrict__ inv, const T* __restrict__ mask,
                                   const T* __restrict__ pos, T* __restrict__ out, int64_t N, int64_t K, int64_t D) {
  const int64_t row = blockIdx.x;  // b * N + n
  const int32_t k = inv[row];
  const T* src = k >= 0 ? xk + (row / N * K + k) * D : mask;
  T* dst = out + row * D;
  if (pos == nullptr) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = src[d];
  } else {
    const T* pe = pos + row % N * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = from_acc<T>(to_acc(src[d]) + to_acc(pe[d]));
  }
}

template <typename T, typename A>
__global__ void unmask_backward_kernel(const T* __restrict__ grad, const int32_t* __restrict__ inv, T* __restrict__ dxk,
                                       A* __restrict__ mask_partial, T* __restrict__ dpos, int64_t B, int64_t N,
                                       int64_t K, int64_t D) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {  // grid.y is capped at 65535: blocks stride over tokens
    A mask_acc = 0, pos_acc = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = b * N + n;
      const T g = grad[row * D + d];
      const int32_t k = inv[row];
      if (k >= 0) {
        dxk[(b * K + k) * D + d] = g;
      } else {
        mask_acc += to_acc(g);
      }
      pos_acc += to_acc(g);
    }
    mask_partial[n * D + d] = mask_acc;
    if (dpos != nullptr) dpos[n * D + d] = from_acc<T>(pos_acc);
  }
}

template <typename T, typename A>
__global__ void column_sum_kernel(const A* __restrict__ partial, T* __restrict__ out, int64_t rows, int64_t D) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  A acc = 0;
  for (int64_t r = 0; r < rows; ++r) acc += partial[r * D + d];
  out[d] = from_acc<T>(acc);
}

int threads_for(int64_t D) { return static_cast<int>(D >= kThreads ? kThreads : ((D + 31) / 32) * 32); }

cudaError_t build_inverse_map(const int64_t* ids, int32_t* inv, int64_t B, int64_t N, int64_t K,
                              cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(inv, 0xFF, static_cast<size_t>(B * N) * sizeof(int32_t), stream);  // all -1
  if (err != cudaSuccess || B * K == 0) return err;
  MDT_LAUNCH(static_cast<unsigned>(cdiv(B * K, kThreads)), kThreads, 0, stream, inverse_map_kernel)(ids, inv, B, N, K);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_unmask_tokens(const UnmaskTokensArgs<T>& a, cudaStream_t stream) {
  const int64_t B = a.B, N = a.N, K = a.K, D = a.D;
  if (B * N == 0 || D == 0) return cudaSuccess;
  cudaError_t err = build_inverse_map(a.ids, a.inv, B, N, K, stream);
  if (err != cudaSuccess) return err;
  MDT_LAUNCH(static_cast<unsigned>(B * N), threads_for(D), 0, stream, unmask_rows_kernel<T>)(
      a.x_kept, a.inv, a.mask, a.pos, a.out, N, K, D);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_unmask_tokens_backward(const UnmaskTokensBwdArgs<T>& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t B = a.B, N = a.N, K = a.K, D = a.D;
  if (D == 0) return cudaSuccess;
  cudaError_t err = build_inverse_map(a.ids, a.inv, B, N, K, stream);
  if (err != cudaSuccess) return err;
  constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on grid.y
  const int threads = threads_for(D);
  const dim3 grid(static_cast<unsigned>(cdiv(D, threads)), static_cast<unsigned>(std::min(N, kMaxGridY)));
  if (N > 0) {
    MDT_LAUNCH(grid, threads, 0, stream, unmask_backward_kernel<T, A>)(a.grad, a.inv, a.d_x_kept, a.mask_partial,
                                                                         a.d_pos, B, N, K, D);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  MDT_LAUNCH(static_cast<unsigned>(cdiv(D, kThreads)), kThreads, 0, stream, column_sum_kernel<T, A>)(
      a.mask_partial, a.d_mask, N, D);
  return cudaGetLastError();
}

#define MDT_INSTANTIATE_UNMASK_TOKENS(T)                                                   \
  template cudaError_t launch_unmask_tokens<T>(const UnmaskTokensArgs<T>&, cudaStream_t); \
  template cudaError_t launch_unmask_tokens_backward<T>(const UnmaskTokensBwdArgs<T>&, cudaStream_t);
MDT_FOR_EACH_FLOAT(MDT_INSTANTIATE_UNMASK_TOKENS)

}  // namespace mdt
