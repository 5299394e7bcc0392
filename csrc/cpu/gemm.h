// The GEMM of mdt_kernels' CPU kernels that multiply by a weight (linear, linear_gelu).
// Three engines compute y = x W^T (+ b):
//   mdt     mdt_kernels' own fp32 GEMM (vec/gemm.h): BLIS-style packing and an at::vec register tile,
//           compiled per instruction set; bias (and linear_gelu's GELU) in its epilogue.
//   onednn  oneDNN's inner product, reached through the dispatcher op mkldnn::_linear_pointwise that
//           PyTorch builds with oneDNN (USE_MKLDNN); bias added in its epilogue. Its kernels pick the
//           widest ISA the CPU has on any vendor, where ATen's fp32 mm calls MKL's sgemm, which on AMD runs
//           its generic kernels.
//   aten    at::addmm / at::mm, as F.linear runs on the CPU.
// The engine is chosen per dtype, from a setting (MDT_KERNELS_CPU_GEMM or set_setting):
//   auto    (default) the table kAutoRows in gemm.cpp: an engine other than ATen only where it runs the
//           dtype and was measured faster (benchmarks/results/cpu_gemm_engine.md);
//   mdt     mdt for fp32, ATen for the other dtypes;
//   onednn  oneDNN for every dtype it runs on this CPU, ATen for the others;
//   aten    ATen for every dtype.
// Whether oneDNN runs a dtype is found out once per dtype by running a tiny inner product: oneDNN has
// no bf16 inner product on a CPU without AVX-512 (or under ONEDNN_MAX_CPU_ISA=AVX2), and raises where
// ATen's bf16 mm falls back to its own GEMM. So no setting ever makes a GEMM fail. float16, float64 and
// empty inner dimensions always take ATen's. The weight gradient dW = g^T x stays at::mm in every
// engine: oneDNN is slower than MKL on that transposed layout.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace mdt::gemm {

// "auto", "mdt", "onednn" or "aten": the setting in force.
std::string setting_name();

// Selects the setting by name; raises ValueError for an unknown name, or for "onednn" when PyTorch
// was built without oneDNN.
void set_setting(const std::string& name);

// "mdt", "onednn" or "aten": the engine that runs the forward GEMMs of this dtype now (the backward's
// dx too, except where auto takes mdt or oneDNN for the fp32 forward GEMMs only, on AMD CPUs without
// oneDNN's AVX-512 kernels: ATen).
std::string engine_name(at::ScalarType dtype);

// (M, N) = x (M, K), contiguous, times w^T for w (N, K) of any strides, plus bias (N,) when given.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias);

// GELU_tanh(x w^T + bias), as linear's arguments, where the engine of x's dtype applies GELU in its
// epilogue (mdt); nullopt elsewhere (the caller runs linear, then its own bias + GELU pass).
std::optional<at::Tensor> linear_gelu_tanh(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

}  // namespace mdt::gemm
