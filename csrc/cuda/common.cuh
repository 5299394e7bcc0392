// Shared by every CUDA kernel file. Kernel files (<op>_kernels.cu) include only CUDA headers and
// this file, so CI can compile them with plain nvcc on machines whose torch has no CUDA. Each op's
// kernel header (<op>_kernels.h) declares its argument structs (typed pointers, sizes, strides) and
// its launchers, templates over the element type, instantiated in the .cu for MDT_FOR_EACH_FLOAT;
// the torch binding (<op>.cpp) picks the type with AT_DISPATCH (MDT_DISPATCH_FLOATS), fills the
// struct and turns the cudaError_t a launcher returns into a Python exception.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <cstdint>
#include <cstdio>

namespace mdt {

// Device-side input check. Host code does not read device data (that would synchronise), so an
// invalid index found by a kernel fails the launch with a device-side assertion, as PyTorch's own
// indexing kernels do, and the kernel never touches memory out of bounds. (The Python wrappers check
// values on the host when MDT_KERNELS_CHECK_IDS=1.) With NDEBUG the kernel traps instead.
// A host build of these files defines MDT_DEVICE_FAIL, MDT_LAUNCH and MDT_DYNAMIC_SHARED in its
// <cuda_runtime.h>, included above; nvcc takes the definitions here.
#if defined(MDT_DEVICE_FAIL)
#elif defined(NDEBUG)
#define MDT_DEVICE_FAIL(cond) \
  do {                        \
    printf("mdt_kernels: device check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
    __trap();                 \
  } while (0)
#else
#define MDT_DEVICE_FAIL(cond) assert(cond)
#endif
#define MDT_DEVICE_CHECK(cond) \
  do {                         \
    if (!(cond)) {             \
      MDT_DEVICE_FAIL(cond);   \
      return;                  \
    }                          \
  } while (0)

constexpr int kThreads = 256;

__host__ __device__ inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Loads as float (double stays double) and stores back rounding to nearest.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T>
__device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }


// Tokens per block for per-sample sums over tokens (two-stage, deterministic): enough blocks to fill a
// GPU, few enough chunk partials. Depends only on the shape (same policy as the Triton kernels).
__host__ __device__ inline int64_t token_chunk(int64_t B, int64_t N) {
  int64_t c = cdiv(B * N, 512);
  c = c < 4 ? 4 : (c > 64 ? 64 : c);
  c = c < N ? c : N;
  return c < 1 ? 1 : c;
}

// A (B, D) tensor read through its strides (in elements), e.g. a modulation row (shift, scale, gate)
// cut from adaLN_modulation(c).chunk(6, dim=1); data == nullptr: absent.
template <typename T>
struct ModRows {
  const T* data = nullptr;
  int64_t stride_b = 0, stride_d = 0;
  __host__ __device__ const T* row(int64_t b) const { return data + b * stride_b; }
};

// X(T) for each floating element type a launcher is instantiated for (explicit instantiations).
#define MDT_FOR_EACH_FLOAT(X) X(float) X(double) X(__half) X(__nv_bfloat16)

// Up to three output pointers passed by value to a kernel.
template <typename T>
struct Ptrs3 {
  T* p[3];
};

// Device code and launches: under nvcc, or in a host build that defines its launch (the bindings include
// this file with a plain host compiler and see none of it).
#if defined(__CUDACC__) || defined(MDT_LAUNCH)

// The one launch point of every kernel: MDT_LAUNCH(grid, block, smem, stream, kernel)(args...) is
// kernel<<<grid, block, smem, stream>>>(args...). `kernel` may hold commas (template arguments).
#if !defined(MDT_LAUNCH)
#define MDT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
// The dynamic shared memory of a kernel, 16-byte aligned.
#define MDT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// Sum over the 32 lanes of a warp (butterfly: every lane gets the same, order-fixed result).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Tail of a warp-per-row LayerNorm + modulate forward. Lane `lane` holds the partial sum s of its columns
// d = lane + 32k of row xr (and reads back only those, so a row the same lanes just wrote needs no sync):
// orow = (x - mean) * rstd * (1 + scale) + shift, scale/shift rows read through their strides; lane 0
// stores the row statistics.
template <typename T, typename A>
__device__ __forceinline__ void warp_modulate_row(const T* xr, A s, int64_t D, int lane, double eps,
                                                  const T* shr, int64_t sh_sd, const T* scr, int64_t sc_sd,
                                                  T* orow, A* mean, A* rstd) {
  const A m = warp_sum(s) / static_cast<A>(D);
  A v = A(0);
  for (int64_t d = lane; d < D; d += 32) {
    const A c = to_acc(xr[d]) - m;
    v += c * c;
  }
  const A rs = A(1) / sqrt(warp_sum(v) / static_cast<A>(D) + static_cast<A>(eps));
  for (int64_t d = lane; d < D; d += 32) {
    const A a = A(1) + to_acc(scr[d * sc_sd]);
    orow[d] = from_acc<T>((to_acc(xr[d]) - m) * rs * a + to_acc(shr[d * sh_sd]));
  }
  if (lane == 0) {
    *mean = m;
    *rstd = rs;
  }
}

// Second stage of a deterministic two-stage reduction: out[p][r][d] = sum over c = 0..C-1, in order, of
// partial[p][r][c][d], for P <= 3 planes of R rows (e.g. samples) of D columns. One thread per output.
template <typename A, typename T>
__global__ void sum_chunks_kernel(const A* __restrict__ partial, Ptrs3<T> outs, int64_t P, int64_t R, int64_t C,
                                  int64_t D) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= P * R * D) return;
  const int64_t p = i / (R * D), rd = i % (R * D), r = rd / D, d = rd % D;
  const A* src = partial + (p * R + r) * C * D + d;
  A s = A(0);
  for (int64_t c = 0; c < C; ++c) s += src[c * D];
  outs.p[p][rd] = from_acc<T>(s);
}

template <typename A, typename T>
cudaError_t launch_sum_chunks(const A* partial, Ptrs3<T> outs, int64_t P, int64_t R, int64_t C, int64_t D,
                              cudaStream_t stream) {
  const int64_t total = P * R * D;
  if (total == 0) return cudaSuccess;
  MDT_LAUNCH(static_cast<unsigned>(cdiv(total, kThreads)), kThreads, 0, stream, sum_chunks_kernel<A, T>)(partial, outs, P,
                                                                                                         R, C, D);
  return cudaGetLastError();
}

#endif  // __CUDACC__ || MDT_LAUNCH

}  // namespace mdt
