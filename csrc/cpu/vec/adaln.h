// The adaLN family's kernels (adaln_modulate, residual_adaln_modulate, gated_residual; forward and
// backward), compiled once per instruction set (vec/adaln.cpp, csrc/cpu/isa.h). The op code
// (csrc/cpu/<op>.cpp) checks, allocates and passes views; x, y, h, g, gh, out, dx, dy are contiguous
// (B, N, D) in one dtype T; shift/scale/gate (B, D) of any strides; mean/rstd (B, N) and the chunk
// partials (P, B, C, D) in the accumulation type (float, double for fp64).
#pragma once
#include "view.h"

namespace mdt::cpu {

constexpr int64_t kAdalnTokenChunk = 32;  // tokens per backward task (per-sample sums in chunk order)

using AdalnModulateFwdFn = void (*)(const View& x, const View& shift, const View& scale, double eps,
                                    const View& out, const View& mean, const View& rstd);
using AdalnModulateBwdFn = void (*)(const View& g, const View& x, const View& scale, const View& mean,
                                    const View& rstd, const View& dx, const View& partial);
using ResidualAdalnFwdFn = void (*)(const View& x, const View& gate, const View& y, const View& shift,
                                    const View& scale, double eps, const View& h, const View& out,
                                    const View& mean, const View& rstd);
using ResidualAdalnBwdFn = void (*)(const View& gh, const View& g, const View& h, const View& y, const View& gate,
                                    const View& scale, const View& mean, const View& rstd, const View& dx,
                                    const View& dy, const View& partial);
using GatedResidualFwdFn = void (*)(const View& x, const View& gate, const View& y, const View& out);
using GatedResidualBwdFn = void (*)(const View& g, const View& gate, const View& y, const View& dy,
                                    const View& partial);
// outs[p][b, :] = sum over chunks c, in order, of partial[p, b, c, :] for the P = num_outs planes.
using ReduceChunksFn = void (*)(const View& partial, const View* outs, int64_t num_outs);

MDT_DECLARE_KERNEL(AdalnModulateFwdFn, adaln_modulate_fwd)
MDT_DECLARE_KERNEL(AdalnModulateBwdFn, adaln_modulate_bwd)
MDT_DECLARE_KERNEL(ResidualAdalnFwdFn, residual_adaln_modulate_fwd)
MDT_DECLARE_KERNEL(ResidualAdalnBwdFn, residual_adaln_modulate_bwd)
MDT_DECLARE_KERNEL(GatedResidualFwdFn, gated_residual_fwd)
MDT_DECLARE_KERNEL(GatedResidualBwdFn, gated_residual_bwd)
MDT_DECLARE_KERNEL(ReduceChunksFn, reduce_chunks)

}  // namespace mdt::cpu
