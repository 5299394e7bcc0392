// linear_gelu CUDA kernels: the elementwise passes around ATen's GEMMs (h = x W^T; dx = dh W, dW = dh^T x).
// Forward: y = GELU_tanh(h + b), grid-stride over the (M, D) elements in packs of 16 bytes (4 fp32, 8
// fp16/bf16, 2 fp64; one element per step when D is not a multiple of the pack or a pointer is not
// 16-byte aligned), so the loads of a warp are consecutive: coalesced. Backward: one block per (chunk of
// rows, block of columns); each thread owns one pack of columns, walks the chunk's rows writing
// dh = g * GELU'(h + b) and keeps its db partial in registers, then stores it to the chunk's slot of the
// workspace. A second kernel adds the chunk partials of each column: every warp of a block adds its own
// contiguous run of chunks in order, then the runs are added in order. The chunk size and so the
// summation order depend only on the shape: deterministic, no atomics.
// Math in fp32 (fp64 for fp64). tanh z = 1 - 2 / (e^{2z} + 1) with z clamped to +-20 (where tanh is +-1
// in fp32 and fp64 alike), as in the Triton twin: tanhf itself would compile to the tanh.approx
// instruction (~5e-4 relative error) under the --use_fast_math that setup.py passes to nvcc, whereas
// expf becomes __expf, whose error stays ~1e-7 absolute in tanh here.
#include <cstring>

#include "linear_gelu_kernels.h"

namespace mdt {
namespace {

constexpr int kBwdThreads = 128;       // threads per block of the dh/db kernel (one column pack each)
constexpr int kDbWarps = 8;            // runs of chunks per column in the db kernel, one per warp
constexpr int64_t kMaxFwdBlocks = 4096;  // grid-stride beyond this
constexpr int kPackBytes = 16;

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T x[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

// As 16-byte words (__stwb: st.global.wb, the default store) when the pack is made of them: a plain
// struct store of a pack whose elements were computed one by one came out of nvcc 13 as 4-byte stores
// in the backward loop.
template <typename T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  if constexpr (sizeof(Pack<T, V>) % sizeof(uint4) == 0) {
    constexpr int W = sizeof(Pack<T, V>) / sizeof(uint4);
    uint4 w[W];
    memcpy(w, &v, sizeof(w));
#pragma unroll
    for (int k = 0; k < W; ++k) __stwb(reinterpret_cast<uint4*>(p) + k, w[k]);
  } else {
    *reinterpret_cast<Pack<T, V>*>(p) = v;
  }
}

__device__ __forceinline__ float tanh_acc(float z) {
  z = fminf(fmaxf(z, -20.0f), 20.0f);
  return 1.0f - 2.0f / (expf(2.0f * z) + 1.0f);
}
__device__ __forceinline__ double tanh_acc(double z) { return tanh(z); }

// t = tanh(k0 (u + k1 u^3)), k0 = sqrt(2/pi), k1 = 0.044715.
template <typename A>
__device__ __forceinline__ A gelu_tanh_arg(A u) {
  return tanh_acc(A(0.7978845608028654) * (u + A(0.044715) * u * u * u));
}

// GELU(u) = u/2 (1 + t)
template <typename A>
__device__ __forceinline__ A gelu(A u) {
  return A(0.5) * u * (A(1) + gelu_tanh_arg(u));
}

// GELU'(u) = (1 + t)/2 + u/2 (1 - t^2) k0 (1 + 3 k1 u^2)
template <typename A>
__device__ __forceinline__ A gelu_grad(A u) {
  const A t = gelu_tanh_arg(u);
  return A(0.5) * (A(1) + t) +
         A(0.5) * u * (A(1) - t * t) * A(0.7978845608028654) * (A(1) + A(3) * A(0.044715) * u * u);
}

// packs = M * D / V; D % V == 0, so a pack never straddles two rows. Each thread tracks the column d of
// its pack incrementally (one division per thread, not per pack).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    linear_gelu_fwd_kernel(const T* __restrict__ h, const T* __restrict__ b, T* __restrict__ y, int64_t packs,
                           int64_t D) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;  // in packs
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= packs) return;
  int64_t d = (i * V) % D;
  const int64_t step = (stride * V) % D;  // a multiple of V below D
  for (; i < packs; i += stride) {
    const Pack<T, V> hv = load_pack<T, V>(h + i * V);
    const Pack<T, V> bv = load_pack<T, V>(b + d);
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.x[k] = from_acc<T>(gelu(to_acc(hv.x[k]) + to_acc(bv.x[k])));
    store_pack<T, V>(y + i * V, out);
    d += step;
    if (d >= D) d -= D;
  }
}

// Block (chunk c, column block): thread columns d .. d+V-1 of rows [c*chunk, min(M, (c+1)*chunk)).
// D % V == 0, so a thread's pack is either wholly inside the row or wholly past its end.
template <typename T, int V, typename A = typename Acc<T>::type>
__global__ void __launch_bounds__(kBwdThreads)
    linear_gelu_bwd_kernel(const T* __restrict__ g, const T* __restrict__ h, const T* __restrict__ b,
                           T* __restrict__ dh, A* __restrict__ partial, int64_t M, int64_t D, int64_t chunk,
                           int64_t col_blocks) {
  const int64_t c = blockIdx.x / col_blocks;
  const int64_t d = ((blockIdx.x % col_blocks) * kBwdThreads + threadIdx.x) * V;
  if (d >= D) return;
  const int64_t r0 = c * chunk, r1 = r0 + chunk < M ? r0 + chunk : M;
  const Pack<T, V> bv = load_pack<T, V>(b + d);
  A bias[V], acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    bias[k] = to_acc(bv.x[k]);
    acc[k] = A(0);
  }
#pragma unroll 4
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * D + d;
    const Pack<T, V> gv = load_pack<T, V>(g + off);
    const Pack<T, V> hv = load_pack<T, V>(h + off);
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A v = to_acc(gv.x[k]) * gelu_grad(to_acc(hv.x[k]) + bias[k]);
      out.x[k] = from_acc<T>(v);
      acc[k] += v;  // db from the unrounded dh, as the CPU kernel
    }
    store_pack<T, V>(dh + off, out);
  }
  Pack<A, V> part;
#pragma unroll
  for (int k = 0; k < V; ++k) part.x[k] = acc[k];
  store_pack<A, V>(partial + c * D + d, part);
}

// db[d] = sum over c of partial[c, d]: block of 32 columns (one per lane) x kDbWarps warps; warp w adds
// chunks [w*run, (w+1)*run) in order, then lane l of warp 0 adds the kDbWarps run sums in order. C == 0
// (no rows) writes zeros.
template <typename A, typename T>
__global__ void __launch_bounds__(32 * kDbWarps)
    linear_gelu_db_kernel(const A* __restrict__ partial, T* __restrict__ db, int64_t C, int64_t D, int64_t run) {
  __shared__ A sums[kDbWarps][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  A s = A(0);
  if (d < D) {
    const int64_t c0 = warp * run, c1 = c0 + run < C ? c0 + run : C;
    for (int64_t c = c0; c < c1; ++c) s += partial[c * D + d];
  }
  sums[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && d < D) {
    A t = sums[0][lane];
#pragma unroll
    for (int w = 1; w < kDbWarps; ++w) t += sums[w][lane];
    db[d] = from_acc<T>(t);
  }
}

// Rows per chunk of the backward: enough blocks to fill a GPU, few chunk partials. Depends only on M
// (the Triton twin's policy).
int64_t row_chunk(int64_t M) {
  const int64_t c = cdiv(M, 512);
  return c < 1 ? 1 : (c > 64 ? 64 : c);
}

int64_t num_chunks(int64_t M) { return M > 0 ? cdiv(M, row_chunk(M)) : 0; }

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, int V>
cudaError_t launch_fwd(const T* h, const T* b, T* y, int64_t M, int64_t D, cudaStream_t stream) {
  const int64_t packs = M * D / V;
  const int64_t blocks = cdiv(packs, kThreads) < kMaxFwdBlocks ? cdiv(packs, kThreads) : kMaxFwdBlocks;
  MDT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, linear_gelu_fwd_kernel<T, V>)(h, b, y, packs, D);
  return cudaGetLastError();
}

// C * col_blocks blocks: below 2^31 for any (M, D) that fits in memory (chunk is 64 from M = 32768 on).
template <typename T, int V, typename A>
cudaError_t launch_bwd(const T* g, const T* h, const T* b, T* dh, A* partial, int64_t M, int64_t D,
                       cudaStream_t stream) {
  const int64_t col_blocks = cdiv(D / V, kBwdThreads);
  const int64_t blocks = num_chunks(M) * col_blocks;
  MDT_LAUNCH(static_cast<unsigned>(blocks), kBwdThreads, 0, stream, linear_gelu_bwd_kernel<T, V>)(g, h, b, dh, partial, M, D,
                                                                                           row_chunk(M), col_blocks);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_linear_gelu_fwd(const LinearGeluArgs<T>& a, cudaStream_t stream) {
  constexpr int V = kPackBytes / static_cast<int>(sizeof(T));
  const int64_t M = a.M, D = a.D;
  if (M * D == 0) return cudaSuccess;
  if (D % V == 0 && aligned(a.h, kPackBytes) && aligned(a.bias, kPackBytes) && aligned(a.y, kPackBytes))
    return launch_fwd<T, V>(a.h, a.bias, a.y, M, D, stream);
  return launch_fwd<T, 1>(a.h, a.bias, a.y, M, D, stream);
}

int64_t linear_gelu_bwd_workspace(int64_t M, int64_t D) { return num_chunks(M) * D; }

template <typename T>
cudaError_t launch_linear_gelu_bwd(const LinearGeluBwdArgs<T>& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  constexpr int V = kPackBytes / static_cast<int>(sizeof(T));
  const int64_t M = a.M, D = a.D, C = num_chunks(M);
  if (M * D > 0) {
    const bool vec = D % V == 0 && aligned(a.grad, kPackBytes) && aligned(a.h, kPackBytes) &&
                     aligned(a.bias, kPackBytes) && aligned(a.dh, kPackBytes) &&
                     aligned(a.workspace, static_cast<int64_t>(sizeof(A)) * V);
    const cudaError_t err = vec ? launch_bwd<T, V>(a.grad, a.h, a.bias, a.dh, a.workspace, M, D, stream)
                                : launch_bwd<T, 1>(a.grad, a.h, a.bias, a.dh, a.workspace, M, D, stream);
    if (err != cudaSuccess) return err;
  }
  if (D == 0) return cudaSuccess;
  MDT_LAUNCH(static_cast<unsigned>(cdiv(D, 32)), 32 * kDbWarps, 0, stream, linear_gelu_db_kernel<A, T>)(
      a.workspace, a.dbias, C, D, cdiv(C, kDbWarps));
  return cudaGetLastError();
}

#define MDT_INSTANTIATE_LINEAR_GELU(T)                                                     \
  template cudaError_t launch_linear_gelu_fwd<T>(const LinearGeluArgs<T>&, cudaStream_t); \
  template cudaError_t launch_linear_gelu_bwd<T>(const LinearGeluBwdArgs<T>&, cudaStream_t);
MDT_FOR_EACH_FLOAT(MDT_INSTANTIATE_LINEAR_GELU)

}  // namespace mdt
