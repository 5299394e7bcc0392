// What the CUDA bindings (csrc/cuda/<op>.cpp) take from c10::cuda, for the host build of the cuda_sim test
// backend: the device guard and the current stream. On CPU tensors both are no-ops (one serial "stream").
#pragma once
#include <c10/core/Device.h>

#include "simt.h"

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }

}  // namespace cuda
}  // namespace c10
