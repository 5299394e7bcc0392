// gather_tokens on CUDA: one block per gathered row, copying with the widest aligned word (16, 4, 2
// or 1 bytes), so the forward is a pure copy at any dtype. Backward zero-fills and scatter-adds.
#include "gather_tokens_kernels.h"

namespace mdt {
namespace {

template <typename Word>
__global__ void gather_rows_kernel(const Word* __restrict__ x, const int64_t* __restrict__ ids, Word* __restrict__ out,
                                   int64_t N, int64_t K, int64_t words_per_row) {
  const int64_t row = blockIdx.x;  // b * K + k
  const int64_t n = ids[row];
  MDT_DEVICE_CHECK(n >= 0 && n < N);
  const Word* src = x + (row / K * N + n) * words_per_row;
  Word* dst = out + row * words_per_row;
  for (int64_t w = threadIdx.x; w < words_per_row; w += blockDim.x) dst[w] = src[w];
}

template <typename T>
__global__ void scatter_add_rows_kernel(const T* __restrict__ grad, const int64_t* __restrict__ ids, T* __restrict__ dx,
                                        int64_t N, int64_t K, int64_t D) {
  const int64_t row = blockIdx.x;
  const int64_t n = ids[row];
  MDT_DEVICE_CHECK(n >= 0 && n < N);
  const T* src = grad + row * D;
  T* dst = dx + (row / K * N + n) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) atomicAdd(dst + d, src[d]);
}

template <typename Word>
cudaError_t gather_with(const void* x, const int64_t* ids, void* out, int64_t rows, int64_t N, int64_t K,
                        int64_t row_bytes, cudaStream_t stream) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(Word));
  const int threads = static_cast<int>(words >= kThreads ? kThreads : ((words + 31) / 32) * 32);
  MDT_LAUNCH(static_cast<unsigned>(rows), threads, 0, stream, gather_rows_kernel<Word>)(
      static_cast<const Word*>(x), ids, static_cast<Word*>(out), N, K, words);
  return cudaGetLastError();
}

bool aligned(const void* p, int64_t row_bytes, int64_t word) {
  return reinterpret_cast<uintptr_t>(p) % word == 0 && row_bytes % word == 0;
}

}  // namespace

template <typename T>
cudaError_t launch_gather_tokens(const GatherTokensArgs<T>& a, cudaStream_t stream) {
  const void *x = a.x, *out = a.out;
  const int64_t rows = a.B * a.K, N = a.N, K = a.K, row_bytes = a.D * static_cast<int64_t>(sizeof(T));
  if (rows == 0 || row_bytes == 0) return cudaSuccess;
  if (aligned(x, row_bytes, 16) && aligned(out, row_bytes, 16))
    return gather_with<uint4>(a.x, a.ids, a.out, rows, N, K, row_bytes, stream);
  if (aligned(x, row_bytes, 4) && aligned(out, row_bytes, 4))
    return gather_with<uint32_t>(a.x, a.ids, a.out, rows, N, K, row_bytes, stream);
  if (aligned(x, row_bytes, 2) && aligned(out, row_bytes, 2))
    return gather_with<uint16_t>(a.x, a.ids, a.out, rows, N, K, row_bytes, stream);
  return gather_with<uint8_t>(a.x, a.ids, a.out, rows, N, K, row_bytes, stream);
}

template <typename T>
cudaError_t launch_gather_tokens_backward(const GatherTokensBwdArgs<T>& a, cudaStream_t stream) {
  const int64_t B = a.B, N = a.N, K = a.K, D = a.D;
  cudaError_t err = cudaMemsetAsync(a.dx, 0, static_cast<size_t>(B * N * D) * sizeof(T), stream);
  if (err != cudaSuccess || B * K == 0 || D == 0) return err;
  const int threads = static_cast<int>(D >= kThreads ? kThreads : ((D + 31) / 32) * 32);
  MDT_LAUNCH(static_cast<unsigned>(B * K), threads, 0, stream, scatter_add_rows_kernel<T>)(a.grad, a.ids, a.dx, N, K, D);
  return cudaGetLastError();
}

#define MDT_INSTANTIATE_GATHER_TOKENS(T)                                                          \
  template cudaError_t launch_gather_tokens<T>(const GatherTokensArgs<T>&, cudaStream_t);         \
  template cudaError_t launch_gather_tokens_backward<T>(const GatherTokensBwdArgs<T>&, cudaStream_t);
MDT_FOR_EACH_FLOAT(MDT_INSTANTIATE_GATHER_TOKENS)

}  // namespace mdt
