// Helpers for the torch side of CUDA kernels (csrc/cuda/<op>.cpp), compiled with a CUDA torch.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

// Where the bindings register their kernels. A host build of the CUDA sources may define it first (-D)
// to register them elsewhere.
#ifndef MDT_CUDA_IMPL
#define MDT_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(mdt_kernels, CUDA, m)
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <type_traits>

namespace mdt {

// The element type a kernel uses for torch's scalar_t (AT_DISPATCH): at::Half -> __half,
// at::BFloat16 -> __nv_bfloat16, others unchanged.
template <typename S>
struct DeviceType {
  using type = S;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename S>
using device_t = typename DeviceType<S>::type;

template <typename T>
constexpr at::ScalarType scalar_type_of() {
  if constexpr (std::is_same_v<T, __half>) {
    return at::kHalf;
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return at::kBFloat16;
  } else {
    return c10::CppTypeToScalarType<T>::value;
  }
}

// t's data as T* (T may be const), for a tensor whose dtype is T's; an undefined tensor gives nullptr.
template <typename T>
T* ptr(const at::Tensor& t) {
  if (!t.defined()) return nullptr;
  TORCH_INTERNAL_ASSERT(t.scalar_type() == scalar_type_of<std::remove_const_t<T>>(), "kernel argument of dtype ",
                        t.scalar_type(), " passed as ", scalar_type_of<std::remove_const_t<T>>());
  if constexpr (std::is_const_v<T>) {
    return static_cast<T*>(t.const_data_ptr());
  } else {
    return static_cast<T*>(t.data_ptr());  // a tensor the kernel writes
  }
}

// The floating dtypes the kernels are instantiated for (float, double, half, bfloat16): runs the lambda
// with scalar_t set (device_t<scalar_t> is the kernel's element type).
#define MDT_DISPATCH_FLOATS(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace mdt
