// Helpers for the torch side of CUDA kernels (csrc/cuda/<op>.cpp), compiled with a CUDA torch, and (with
// MDT_SIMT) for CPU tensors on the host execution layer csrc/simt: the cuda_sim test backend, whose ops are
// the same bindings registered as mdt_kernels_sim::* for CPU tensors.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>
#if defined(MDT_SIMT)
#include "../simt/torch_shim.h"
#define MDT_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(mdt_kernels_sim, CPU, m)
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define MDT_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(mdt_kernels, CUDA, m)
#endif

#include "../cuda/launch.h"

namespace mdt {

inline DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t.scalar_type());
  }
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace mdt
