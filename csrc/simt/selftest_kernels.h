// The layer's self-test kernels (selftest_kernels.cpp): `name` picks the case (see tests/test_simt.py).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace mdt {

// x (n floats) is the input; out (1024 floats, 32x8 for warp_ops, one per block for block_sum); h, b
// (n halves / bfloat16s) and hs, bs (one each, zeroed) for "half". cudaErrorInvalidValue for an unknown name.
cudaError_t launch_selftest(const char* name, const float* x, int64_t n, float* out, void* h, void* b, void* hs,
                            void* bs);

}  // namespace mdt
