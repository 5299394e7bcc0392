// simt: the part of the CUDA programming model that csrc/cuda/*_kernels.cu use, executed on the host so
// that the unmodified kernel sources compile with g++ and run on CPU tensors (the test suite's cuda_sim
// backend; see csrc/simt/README.md). One launch runs its blocks one after the other; a block runs on the
// calling OS thread with one fiber per CUDA thread, switched only at __syncthreads and warp intrinsics,
// which are real barriers: a barrier that only some threads reach, a warp intrinsic whose mask names a
// lane that does not take part, or a shuffle that reads a lane outside its mask fails the launch (on a GPU
// these are undefined behaviour). Launch limits are checked as the hardware does.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <math.h>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------------
// Runtime types and calls

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
  cudaErrorAssert = 710,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

namespace simt {
cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return simt::func_set_attribute(reinterpret_cast<const void*>(func), attr, value);
}

// ---------------------------------------------------------------------------------------------------
// Execution space keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // one launch at a time, blocks one after the other: one copy per block
#define __constant__ static

namespace simt {

// Where an intrinsic was called: two threads meet at a barrier only at the same call site.
struct Site {
  const char* file;
  int line;
};

struct ThreadCtx {
  uint3 tid;
  int linear;
};
extern thread_local const ThreadCtx* g_thread;  // the running fiber's thread
extern thread_local uint3 g_block_idx;
extern thread_local dim3 g_block_dim, g_grid_dim;
unsigned char* dynamic_smem();

void syncthreads(Site s);
void syncwarp(Site s, unsigned mask = 0xffffffffu);
// Warp collective: op 0 shfl_idx, 1 shfl_up, 2 shfl_down, 3 shfl_xor, 4 ballot, 5 any, 6 all.
uint64_t warp_collective(Site s, int op, unsigned mask, uint64_t bits, int arg, int width);
[[noreturn]] void device_trap(Site s, const char* what);
[[noreturn]] void device_fail(const char* cond, Site s);  // a failed MDT_DEVICE_CHECK: the launch fails with cudaErrorAssert

template <typename T>
T shfl(Site s, int op, unsigned mask, T v, int arg, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_collective(s, op, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Launch: MDT_LAUNCH(grid, block, smem, stream, kernel)(args...) in common.cuh.

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  const void* func;
  const char* name;
};
// Runs body(thread) for every thread of every block; returns the launch's error (also kept for
// cudaGetLastError), after checking the configuration as the hardware does.
cudaError_t launch(const LaunchConfig& cfg, const std::function<void()>& body);

template <typename... P>
struct Launcher {
  void (*func)(P...);
  LaunchConfig cfg;
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    // Kernel parameters are copies made at launch (as the hardware's parameter buffer).
    std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    auto f = func;
    launch(cfg, [&params, f]() { std::apply(f, params); });
  }
};
template <typename... P>
Launcher<P...> make_launcher(void (*func)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, const char* name) {
  return Launcher<P...>{func, LaunchConfig{grid, block, smem, reinterpret_cast<const void*>(func), name}};
}

}  // namespace simt

#define threadIdx (::simt::g_thread->tid)
#define blockIdx (::simt::g_block_idx)
#define blockDim (::simt::g_block_dim)
#define gridDim (::simt::g_grid_dim)
constexpr int warpSize = 32;

#define SIMT_SITE (::simt::Site{__FILE__, __LINE__})
#define __syncthreads() ::simt::syncthreads(SIMT_SITE)
#define __syncwarp(...) ::simt::syncwarp(SIMT_SITE __VA_OPT__(, __VA_ARGS__))
#define __shfl_sync(mask, v, lane, ...) ::simt::shfl(SIMT_SITE, 0, mask, v, lane __VA_OPT__(, __VA_ARGS__))
#define __shfl_up_sync(mask, v, d, ...) ::simt::shfl(SIMT_SITE, 1, mask, v, d __VA_OPT__(, __VA_ARGS__))
#define __shfl_down_sync(mask, v, d, ...) ::simt::shfl(SIMT_SITE, 2, mask, v, d __VA_OPT__(, __VA_ARGS__))
#define __shfl_xor_sync(mask, v, m, ...) ::simt::shfl(SIMT_SITE, 3, mask, v, m __VA_OPT__(, __VA_ARGS__))
#define __ballot_sync(mask, p) \
  static_cast<unsigned>(::simt::warp_collective(SIMT_SITE, 4, mask, (p) ? 1u : 0u, 0, 32))
#define __any_sync(mask, p) static_cast<int>(::simt::warp_collective(SIMT_SITE, 5, mask, (p) ? 1u : 0u, 0, 32))
#define __all_sync(mask, p) static_cast<int>(::simt::warp_collective(SIMT_SITE, 6, mask, (p) ? 1u : 0u, 0, 32))
#define __trap() ::simt::device_trap(SIMT_SITE, "__trap()")

// The hooks of csrc/cuda/common.cuh: a launch on this layer, a kernel's dynamic shared memory, a failed device
// check (the launch fails, the binding raises).
#define MDT_LAUNCH(grid, block, smem, stream, ...) \
  ::simt::make_launcher(&__VA_ARGS__, dim3(grid), dim3(block), (smem), (stream), #__VA_ARGS__)
#define MDT_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::simt::dynamic_smem())
#define MDT_DEVICE_FAIL(cond) ::simt::device_fail(#cond, SIMT_SITE)

// ---------------------------------------------------------------------------------------------------
// 16-bit floating point with CUDA's conversions (round to nearest even; NaN stays NaN)

namespace simt {
inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16_rn(float f) {
  uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) { return u2f(static_cast<uint32_t>(h) << 16); }
uint16_t float_to_half_rn(float f);
uint16_t double_to_half_rn(double d);
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return u2f(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  return u2f(sign | ((exp + 112) << 23) | (man << 13));
}
}  // namespace simt

struct __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(simt::float_to_half_rn(f)) {}
  __half(double d) : __x(simt::double_to_half_rn(d)) {}
  operator float() const { return simt::half_to_float(__x); }
};
struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(simt::float_to_bf16_rn(f)) {}
  // CUDA rounds a double to bfloat16 once; float_to_bf16_rn(float(d)) would round twice.
  __nv_bfloat16(double d);
  operator float() const { return simt::bf16_to_float(__x); }
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;
inline float __half2float(__half h) { return simt::half_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return simt::bf16_to_float(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }

// ---------------------------------------------------------------------------------------------------
// Atomics: blocks and fibers never run at the same time, so a read-modify-write is atomic. Not seen by the
// shared-memory race check (SIMT_NO_RACECHECK): atomics by several threads are no race.

#if defined(SIMT_RACECHECK_BUILD)
#define SIMT_NO_RACECHECK __attribute__((no_sanitize_thread))
#else
#define SIMT_NO_RACECHECK
#endif

inline SIMT_NO_RACECHECK float atomicAdd(float* p, float v) { const float old = *p; *p = old + v; return old; }
inline SIMT_NO_RACECHECK double atomicAdd(double* p, double v) { const double old = *p; *p = old + v; return old; }
inline SIMT_NO_RACECHECK int atomicAdd(int* p, int v) { const int old = *p; *p = old + v; return old; }
inline SIMT_NO_RACECHECK unsigned atomicAdd(unsigned* p, unsigned v) { const unsigned old = *p; *p = old + v; return old; }
inline SIMT_NO_RACECHECK unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
inline SIMT_NO_RACECHECK __half atomicAdd(__half* p, __half v) {
  const __half old = *p;
  *p = __half(static_cast<float>(old) + static_cast<float>(v));
  return old;
}
inline SIMT_NO_RACECHECK __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
  const __nv_bfloat16 old = *p;
  *p = __nv_bfloat16(static_cast<float>(old) + static_cast<float>(v));
  return old;
}
template <typename T>
inline SIMT_NO_RACECHECK T atomicExch(T* p, T v) {
  static_assert(std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, float> ||
                std::is_same_v<T, unsigned long long>, "atomicExch: int, unsigned, float or unsigned long long");
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline SIMT_NO_RACECHECK T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <typename T>
inline SIMT_NO_RACECHECK T atomicMax(T* p, T v) { const T old = *p; if (v > old) *p = v; return old; }
template <typename T>
inline SIMT_NO_RACECHECK T atomicMin(T* p, T v) { const T old = *p; if (v < old) *p = v; return old; }

// ---------------------------------------------------------------------------------------------------
// Math: the device functions and intrinsics the kernels call. The fast intrinsics (__expf, ...) are
// approximations on the GPU (and --use_fast_math makes expf one); here they are the libm functions.

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
using std::isfinite;
using std::isinf;
using std::isnan;

// Cache-hinted loads and stores are plain accesses.
template <typename T>
inline void __stwb(T* p, T v) { *p = v; }
template <typename T>
inline void __stcs(T* p, T v) { *p = v; }
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcs(const T* p) { return *p; }
