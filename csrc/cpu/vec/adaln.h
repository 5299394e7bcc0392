// The adaLN family's kernels, compiled once per instruction set (vec/adaln.cpp, csrc/cpu/isa.h). The three
// ops are one computation in two parts, and each op is a choice of parts:
//   residual:  h = x + gate[b] * y                                  (gated_residual)
//   modulate:  out = LayerNorm_no_affine(h) * (1 + scale[b]) + shift[b]   (adaln_modulate, with h = x)
//   both:      residual_adaln_modulate.
// The op code (csrc/cpu/adaln.cpp) checks, allocates and fills the argument structs; a part runs when its
// views are defined (gate for the residual, scale for the modulate part). x, y, h, g, gh, out, dx, dy are
// contiguous (B, N, D) in one dtype T; shift/scale/gate (B, D) of any strides; mean/rstd (B, N) and the
// chunk partials (P, B, C, D) in the accumulation type (float, double for fp64).
#pragma once
#include "view.h"

namespace mdt::cpu {

constexpr int64_t kAdalnTokenChunk = 32;  // tokens per backward task (per-sample sums in chunk order)

struct AdalnFwdArgs {
  View x;
  View gate, y;      // residual part (both defined or neither)
  View shift, scale; // modulate part (both defined or neither)
  double eps = 0;
  View h;            // written when both parts run
  View out;          // the residual part alone writes h here
  View mean, rstd;   // modulate part: h's row statistics
};

// The gradients of the parts, with g = dout (of out, or of h for the residual part alone).
struct AdalnBwdArgs {
  View g;
  View gh;                 // both parts: dh from the residual stream (may be undefined)
  View x;                  // modulate part: its input (x, or h as stored)
  View scale, mean, rstd;  // modulate part
  View gate, y;            // residual part
  View dx;                 // modulate part: d(its input)
  View dy;                 // residual part
  View partial;            // planes: dshift, dscale (modulate part), then dgate (residual part)
};

using AdalnFwdFn = void (*)(const AdalnFwdArgs& a);
using AdalnBwdFn = void (*)(const AdalnBwdArgs& a);
// outs[p][b, :] = sum over chunks c, in order, of partial[p, b, c, :] for the P = num_outs planes.
using ReduceChunksFn = void (*)(const View& partial, const View* outs, int64_t num_outs);

MDT_DECLARE_KERNEL(AdalnFwdFn, adaln_fwd)
MDT_DECLARE_KERNEL(AdalnBwdFn, adaln_bwd)
MDT_DECLARE_KERNEL(ReduceChunksFn, reduce_chunks)

}  // namespace mdt::cpu
