// What a torch binding needs to call a launcher: element-type codes and the CUDA runtime types.
// Host-only; the device helpers live in common.cuh.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace mdt {

// Element types crossing the binding boundary (torch.dtype -> DType in the binding).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

}  // namespace mdt
