// linear_gelu's bias + GELU passes (csrc/cpu/linear_gelu.cpp), compiled once per instruction set
// (vec/linear_gelu.cpp, csrc/cpu/isa.h). h, g, y, dh: contiguous (M, D) in one dtype T; bias (D,) of T;
// partial (C, D) of row-chunk sums of dh in the accumulation type, C = ceil(M / kLinearGeluRowChunk).
#pragma once
#include "view.h"

namespace mdt::cpu {

constexpr int64_t kLinearGeluRowChunk = 16;

// y = GELU_tanh(h + bias)
using LinearGeluFwdFn = void (*)(const View& h, const View& bias, const View& y);
// dh = g * GELU_tanh'(h + bias), and each chunk of rows' sum of dh into partial
using LinearGeluBwdFn = void (*)(const View& g, const View& h, const View& bias, const View& dh, const View& partial);

MDT_DECLARE_KERNEL(LinearGeluFwdFn, linear_gelu_fwd)
MDT_DECLARE_KERNEL(LinearGeluBwdFn, linear_gelu_bwd)

}  // namespace mdt::cpu
