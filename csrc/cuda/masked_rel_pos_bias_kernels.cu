// masked_rel_pos_bias on CUDA. With W = 2G-1, idx(p,q) = A(p) - L(q),
// A(p) = (r_p + G-1) W + c_p + G-1 and L(q) = r_q W + c_q (see csrc/cpu/masked_rel_pos_bias.cpp).
// Forward: one block per output row (b,h,i), threads over j, one table read per element.
// Backward: one block per (b,h) accumulates its K*K gradients into a shared-memory copy of the
// table column, then adds it to the global accumulator (atomics: last bits vary run to run).
#include "masked_rel_pos_bias_kernels.h"

namespace mdt {
namespace {

__device__ __forceinline__ int64_t row_offset(int64_t p, int64_t G) { return (p / G + G - 1) * (2 * G - 1) + p % G + G - 1; }
__device__ __forceinline__ int64_t col_offset(int64_t q, int64_t G) { return q / G * (2 * G - 1) + q % G; }

template <typename T>
__global__ void rel_bias_fwd_kernel(const T* __restrict__ table, const int64_t* __restrict__ ids, T* __restrict__ out,
                                    int64_t H, int64_t K, int64_t G) {
  const int64_t row = blockIdx.x;  // (b * H + h) * K + i
  const int64_t i = row % K, h = row / K % H, b = row / K / H;
  const int64_t p = ids[b * K + i];
  MDT_DEVICE_CHECK(p >= 0 && p < G * G);
  const int64_t a = row_offset(p, G);
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
    const int64_t q = ids[b * K + j];
    MDT_DEVICE_CHECK(q >= 0 && q < G * G);
    out[row * K + j] = table[(a - col_offset(q, G)) * H + h];
  }
}

template <typename T, typename A, bool kShared>
__global__ void rel_bias_bwd_kernel(const T* __restrict__ grad, const int64_t* __restrict__ ids, A* __restrict__ dtable,
                                    int64_t H, int64_t K, int64_t G, int64_t R) {
  MDT_DYNAMIC_SHARED(unsigned char, smem_raw);
  A* acc = reinterpret_cast<A*>(smem_raw);
  const int64_t bh = blockIdx.x, h = bh % H, b = bh / H;
  if (kShared) {
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x) acc[r] = 0;
    __syncthreads();
  }
  for (int64_t i = 0; i < K; ++i) {
    const int64_t p = ids[b * K + i];
    if (p < 0 || p >= G * G) continue;  // the forward rejected such ids; never write out of bounds
    const int64_t a = row_offset(p, G);
    const T* g = grad + (bh * K + i) * K;
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
      const int64_t q = ids[b * K + j];
      if (q < 0 || q >= G * G) continue;
      const int64_t idx = a - col_offset(q, G);
      if (kShared) {
        atomicAdd(acc + idx, to_acc(g[j]));
      } else {
        atomicAdd(dtable + idx * H + h, to_acc(g[j]));
      }
    }
  }
  if (kShared) {
    __syncthreads();
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x)
      if (acc[r] != A(0)) atomicAdd(dtable + r * H + h, acc[r]);
  }
}

int threads_for(int64_t n) { return static_cast<int>(n >= kThreads ? kThreads : ((n + 31) / 32) * 32); }

}  // namespace

template <typename T>
cudaError_t launch_masked_rel_pos_bias(const MaskedRelPosBiasArgs<T>& a, cudaStream_t stream) {
  const int64_t B = a.B, H = a.H, K = a.K;
  if (B * H * K == 0 || K == 0) return cudaSuccess;
  MDT_LAUNCH(static_cast<unsigned>(B * H * K), threads_for(K), 0, stream, rel_bias_fwd_kernel<T>)(a.table, a.ids,
                                                                                                   a.out, H, K, a.G);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_masked_rel_pos_bias_backward(const MaskedRelPosBiasBwdArgs<T>& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t B = a.B, H = a.H, K = a.K, G = a.G, R = a.R;
  cudaError_t err = cudaMemsetAsync(a.d_table_acc, 0, static_cast<size_t>(R * H) * sizeof(A), stream);
  if (err != cudaSuccess || B * H == 0 || K == 0) return err;
  const size_t smem = static_cast<size_t>(R) * sizeof(A);
  const unsigned blocks = static_cast<unsigned>(B * H);
  if (smem <= 48 * 1024) {
    MDT_LAUNCH(blocks, threads_for(K), smem, stream, rel_bias_bwd_kernel<T, A, true>)(a.grad, a.ids, a.d_table_acc, H,
                                                                                      K, G, R);
  } else {
    MDT_LAUNCH(blocks, threads_for(K), 0, stream, rel_bias_bwd_kernel<T, A, false>)(a.grad, a.ids, a.d_table_acc, H,
                                                                                    K, G, R);
  }
  return cudaGetLastError();
}

#define MDT_INSTANTIATE_MASKED_REL_POS_BIAS(T)                                                        \
  template cudaError_t launch_masked_rel_pos_bias<T>(const MaskedRelPosBiasArgs<T>&, cudaStream_t); \
  template cudaError_t launch_masked_rel_pos_bias_backward<T>(const MaskedRelPosBiasBwdArgs<T>&, cudaStream_t);
MDT_FOR_EACH_FLOAT(MDT_INSTANTIATE_MASKED_REL_POS_BIAS)

}  // namespace mdt
