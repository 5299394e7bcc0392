// mdt_kernels' own fp32 GEMM (the "mdt" engine of csrc/cpu/gemm.h), compiled once per instruction set
// (vec/gemm.cpp, csrc/cpu/isa.h): y = x w^T (+ bias), blocked and packed as BLIS does, on a register tile
// of kGemmMR rows by two at::vec vectors.
// x: (M, K) with unit column stride; w: (N, K) of any strides (the forward's (N, K) layout, or the
// backward's transposed view); bias: (N,) contiguous, or undefined; y: (M, N) with unit column stride.
// All float32, K > 0. gelu: y = GELU_tanh(x w^T + bias) instead (linear_gelu's inference form), applied
// to each tile of y while it is in registers and L1.
#pragma once
#include "view.h"

namespace mdt::cpu {

constexpr int64_t kGemmMR = 6;

using GemmF32Fn = void (*)(const View& x, const View& w, const View& bias, const View& y, bool gelu);

MDT_DECLARE_KERNEL(GemmF32Fn, gemm_f32)

}  // namespace mdt::cpu
