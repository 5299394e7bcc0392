// Kernels that check the host execution layer itself (tests/test_simt.py): the semantics it promises
// (barriers, warp collectives, shared memory, 16-bit conversions, atomics) and the errors it raises for
// what is undefined on a GPU (a barrier not every thread reaches, a mask naming a lane that is absent, a
// shuffle reading outside its mask, launches beyond the hardware's limits, failed device checks).
// Launched by csrc/simt/selftest.cpp, the op mdt_kernels_sim::simt_selftest(case, x), in the cuda_sim
// extension only. Compiled as a kernel file: with the shared-memory race check's instrumentation.
#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "common.cuh"
#include "selftest_kernels.h"

namespace mdt {
namespace {

// out[block] = sum of x over the block's 256 elements: the classic shared-memory tree.
__global__ void block_sum_kernel(const float* x, float* out, int64_t n) {
  __shared__ float buf[256];
  const int t = threadIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + t;
  buf[t] = i < n ? x[i] : 0.f;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// Per lane of one warp (x holds 32 floats): columns 0..7 of out[lane]: shfl_down 3, shfl_up 5, shfl idx
// 31-lane, shfl_xor 1 within width 8, shfl_down 2 within width 16, ballot(x > 0), warp_sum, dynamic smem.
__global__ void warp_ops_kernel(const float* x, float* out) {
  MDT_DYNAMIC_SHARED(float, dyn);
  const int lane = threadIdx.x;
  const float v = x[lane];
  float* o = out + lane * 8;
  o[0] = __shfl_down_sync(0xffffffffu, v, 3);
  o[1] = __shfl_up_sync(0xffffffffu, v, 5);
  o[2] = __shfl_sync(0xffffffffu, v, 31 - lane);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 1, 8);
  o[4] = __shfl_down_sync(0xffffffffu, v, 2, 16);
  o[5] = static_cast<float>(__ballot_sync(0xffffffffu, v > 0.f));
  o[6] = warp_sum(v);
  dyn[31 - lane] = v;
  __syncwarp();
  o[7] = dyn[lane];
}

__global__ void barrier_exit_kernel(float* out) {
  if (threadIdx.x >= 16) return;  // these threads never reach the barrier
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void barrier_divergent_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void shfl_absent_lane_kernel(float* out) {
  if (threadIdx.x >= 16) return;  // lanes 16..31 are named in the full mask but have exited
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

__global__ void shfl_outside_mask_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.f, 16);  // reads lanes 16..31: outside the mask
}

__global__ void device_check_kernel(const float* x) { MDT_DEVICE_CHECK(x[threadIdx.x] >= 0.f); }

__global__ void smem_kernel(float* out) {
  MDT_DYNAMIC_SHARED(float, dyn);
  dyn[threadIdx.x] = 1.f;
  out[threadIdx.x] = dyn[threadIdx.x];
}

// Thread t reads the element thread 63-t wrote: a race without the barrier, fine with it.
template <bool kSync>
__global__ void exchange_kernel(float* out) {
  __shared__ float buf[64];
  const int t = threadIdx.x;
  buf[t] = static_cast<float>(t);
  if (kSync) __syncthreads();
  out[t] = buf[63 - t];
}

// Lanes exchange through shared memory within one warp: ordered by __syncwarp, a race without it.
template <bool kSync>
__global__ void warp_exchange_kernel(float* out) {
  MDT_DYNAMIC_SHARED(float, buf);
  const int t = threadIdx.x;
  buf[t] = static_cast<float>(t);
  if (kSync) __syncwarp();
  out[t] = buf[t ^ 1];
}

__global__ void half_kernel(const float* x, __half* h, __nv_bfloat16* b, __half* hsum, __nv_bfloat16* bsum,
                            int64_t n) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    h[i] = __float2half_rn(x[i]);
    b[i] = __float2bfloat16_rn(x[i]);
    atomicAdd(hsum, h[i]);
    atomicAdd(bsum, b[i]);
  }
}

}  // namespace

cudaError_t launch_selftest(const char* name_c, const float* xp, int64_t n, float* op, void* h, void* b, void* hs,
                            void* bs) {
  const std::string name(name_c);
  if (name == "block_sum") {
    MDT_LAUNCH(static_cast<unsigned>(cdiv(n, 256)), 256, 0, nullptr, block_sum_kernel)(xp, op, n);
  } else if (name == "warp_ops") {
    MDT_LAUNCH(1, 32, 32 * sizeof(float), nullptr, warp_ops_kernel)(xp, op);
  } else if (name == "race") {
    MDT_LAUNCH(1, 64, 0, nullptr, exchange_kernel<false>)(op);
  } else if (name == "no_race") {
    MDT_LAUNCH(1, 64, 0, nullptr, exchange_kernel<true>)(op);
  } else if (name == "warp_race") {
    MDT_LAUNCH(1, 32, 32 * sizeof(float), nullptr, warp_exchange_kernel<false>)(op);
  } else if (name == "warp_no_race") {
    MDT_LAUNCH(1, 32, 32 * sizeof(float), nullptr, warp_exchange_kernel<true>)(op);
  } else if (name == "barrier_exit") {
    MDT_LAUNCH(1, 64, 0, nullptr, barrier_exit_kernel)(op);
  } else if (name == "barrier_divergent") {
    MDT_LAUNCH(1, 64, 0, nullptr, barrier_divergent_kernel)(op);
  } else if (name == "shfl_absent_lane") {
    MDT_LAUNCH(1, 32, 0, nullptr, shfl_absent_lane_kernel)(op);
  } else if (name == "shfl_outside_mask") {
    MDT_LAUNCH(1, 32, 0, nullptr, shfl_outside_mask_kernel)(op);
  } else if (name == "device_check") {
    MDT_LAUNCH(1, static_cast<unsigned>(n), 0, nullptr, device_check_kernel)(xp);
  } else if (name == "threads_1024") {
    MDT_LAUNCH(1, 1024, 1024 * sizeof(float), nullptr, smem_kernel)(op);  // 1024 threads: legal
  } else if (name == "threads_1025") {
    MDT_LAUNCH(1, 1025, 0, nullptr, smem_kernel)(op);
  } else if (name == "block_z_65") {
    MDT_LAUNCH(1, dim3(1, 1, 65), 0, nullptr, smem_kernel)(op);
  } else if (name == "grid_y_65536") {
    MDT_LAUNCH(dim3(1, 65536), 1, 4, nullptr, smem_kernel)(op);
  } else if (name == "grid_x_2^31") {
    MDT_LAUNCH(dim3(2147483648u), 1, 4, nullptr, smem_kernel)(op);
  } else if (name == "smem_48k") {
    MDT_LAUNCH(1, 32, 48 * 1024, nullptr, smem_kernel)(op);
  } else if (name == "smem_48k_plus_1") {
    MDT_LAUNCH(1, 32, 48 * 1024 + 1, nullptr, smem_kernel)(op);
  } else if (name == "smem_opt_in") {
    cudaError_t err = cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
    if (err != cudaSuccess) return err;
    MDT_LAUNCH(1, 32, 100 * 1024, nullptr, smem_kernel)(op);
    err = cudaGetLastError();
    const cudaError_t reset = cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024);
    return err != cudaSuccess ? err : reset;
  } else if (name == "half") {
    MDT_LAUNCH(1, 64, 0, nullptr, half_kernel)(xp, static_cast<__half*>(h), static_cast<__nv_bfloat16*>(b),
                                               static_cast<__half*>(hs), static_cast<__nv_bfloat16*>(bs), n);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace mdt
