// The GEMM of mdt_kernels' CPU kernels that multiply by a weight (linear, linear_gelu).
// Two engines compute y = x W^T (+ b):
//   onednn  oneDNN's inner product, reached through the dispatcher op mkldnn::_linear_pointwise that
//           PyTorch builds with oneDNN (USE_MKLDNN); bias added in its epilogue. Its kernels pick the
//           widest ISA the CPU has on any vendor (AVX-512 on AMD Zen 4), where ATen's fp32 mm calls
//           MKL's sgemm, which on AMD runs its generic `def` kernels, not its AVX-512 ones: on the
//           2-core EPYC of benchmarks/results ~8% faster on MDT's projection shapes (forward and dx).
//   aten     at::addmm / at::mm, as F.linear runs on the CPU.
// onednn serves float32 and bfloat16 with K > 0; other dtypes and empty inner dimensions take ATen's.
// The engine is process state: MDT_KERNELS_CPU_GEMM (onednn|aten) gives the default, onednn when
// PyTorch has it; set_engine changes it (mdt_kernels.set_cpu_gemm_engine). The weight gradient
// dW = g^T x stays at::mm in both: oneDNN is slower than MKL on that transposed layout.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace mdt::gemm {

// "onednn" or "aten": the engine in use now.
std::string engine_name();

// Selects the engine by name; raises ValueError for an unknown name or an engine PyTorch lacks.
void set_engine(const std::string& name);

// (M, N) = x (M, K), contiguous, times w^T for w (N, K) of any strides, plus bias (N,) when given.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias);

}  // namespace mdt::gemm
