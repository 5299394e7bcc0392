// Shared by every CUDA kernel file. Kernel files (<op>_kernels.cu) include only CUDA headers and
// this file: raw pointers, explicit launch configuration and a stream argument, so CI can compile
// them with plain nvcc on machines whose torch has no CUDA. Launchers return cudaError_t; the torch
// bindings (<op>.cpp, built only with a CUDA torch) turn a failure into a Python exception.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <cstdint>
#include <cstdio>

#include "launch.h"

namespace mdt {

// Device-side input check. Host code does not read device data (that would synchronise), so an
// invalid index found by a kernel fails the launch with a device-side assertion, as PyTorch's own
// indexing kernels do, and the kernel never touches memory out of bounds. (The Python wrappers check
// values on the host when MDT_KERNELS_CHECK_IDS=1.) With NDEBUG the kernel traps instead.
#ifdef NDEBUG
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

// Calls f(T{}) with T the C++ type of `dtype`; returns cudaErrorInvalidValue for an unknown code.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat64: return f(double{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace mdt
