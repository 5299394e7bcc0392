// Host replacement of <c10/cuda/CUDAGuard.h> and <c10/cuda/CUDAStream.h>, what the CUDA bindings
// (csrc/cuda/<op>.cpp) take from c10::cuda: the device guard and the current stream. On CPU tensors both
// are no-ops (one serial "stream").
#pragma once
#include <c10/core/Device.h>

#include "../../../simt.h"

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
