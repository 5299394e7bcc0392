// The vectorised inner loops of the fused Adan step and of the gradients' global norm (csrc/cpu/adan.cpp),
// compiled once per instruction set (vec/adan.cpp, csrc/cpu/isa.h). Raw pointers and sizes only.
#pragma once
#include <cstdint>

#include "view.h"

namespace mdt::cpu {

// Adan's hyper-parameters folded into the constants of the update (adan.cpp's header comment).
struct AdanConsts {
  double clip, b1, b2, b3, omb1, omb2, omb3, step_size, step_size_diff, bc3_sqrt, eps, decay;
};

// One tensor's slice [begin, end) of a step: p and g of type `param`, the four states of type `state`.
struct AdanSlice {
  void* p;
  const void* g;
  void *m, *n, *v, *q;
  int64_t begin, end;
};

struct AdanStep {
  Dtype param, state;
  bool first, no_prox;
  AdanConsts c;
};

// Updates one slice; math in fp32, or fp64 when param or state is fp64.
using AdanSliceFn = void (*)(const AdanStep&, const AdanSlice&);
MDT_DECLARE_KERNEL(AdanSliceFn, adan_slice)

// Sum of squares of n elements of type `dtype` at x, in double (fp32 lanes for the other types).
using SumSquaresFn = double (*)(Dtype dtype, const void* x, int64_t n);
MDT_DECLARE_KERNEL(SumSquaresFn, sum_squares)

}  // namespace mdt::cpu
