// Fused multi-tensor Adan step on CPU: one pass over memory per element. For each element it reads
// the parameter, the gradient and the four states and writes the parameter and the four states, all
// in registers in between (44 bytes per fp32 parameter; the foreach reference moves ~184). The work
// is a flat list of fixed-size chunks over every tensor of the call, split across threads.
//
// Math (sail-sg/Adan as coded, computed in fp32, or fp64 for fp64 tensors), with c = clip_coef:
//   g = c * grad;  d = first ? 0 : g + neg_pre_grad          (neg_pre_grad holds -previous g)
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) d;  n = b3 n + (1-b3) (g + b2 d)^2
//   denom = sqrt(n) / sqrt(bc3) + eps;  update = (lr/bc1 * m + lr*b2/bc2 * v) / denom
//   p = no_prox ? p (1 - lr wd) - update : (p - update) / (1 + lr wd);  neg_pre_grad = -g
// A non-finite clip_coef is the caller's "skip this step" signal: nothing is read or written.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/adan.h"
#include "tensor_view.h"
#include "vec/adan.h"

namespace mdt {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per unit of parallel work

struct TensorPtrs {
  void *p, *g, *m, *n, *v, *q;
};
struct WorkItem {
  int64_t tensor, begin, end;
};

void adan_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                   at::TensorList exp_avg_diff, at::TensorList neg_pre_grad, const at::Tensor& clip_coef, double lr,
                   double beta1, double beta2, double beta3, double bias_correction1, double bias_correction2,
                   double bias_correction3_sqrt, double eps, double weight_decay, bool no_prox, bool first) {
  check_adan_step(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef);
  if (params.empty()) return;
  const auto p_type = params[0].scalar_type(), s_type = exp_avg[0].scalar_type();

  const float clip = clip_coef.item<float>();
  if (!std::isfinite(clip)) return;  // skip signal (non-finite gradients under the skip policy)

  std::vector<TensorPtrs> ptrs;
  std::vector<WorkItem> work;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    if (numel == 0) continue;
    ptrs.push_back({params[i].data_ptr(), const_cast<void*>(grads[i].const_data_ptr()), exp_avg[i].data_ptr(),
                    exp_avg_sq[i].data_ptr(), exp_avg_diff[i].data_ptr(), neg_pre_grad[i].data_ptr()});
    const int64_t t = static_cast<int64_t>(ptrs.size()) - 1;
    for (int64_t b = 0; b < numel; b += kChunk) work.push_back({t, b, std::min(numel, b + kChunk)});
  }
  if (work.empty()) return;

  const cpu::AdanStep step{cpu::dtype_of(p_type), cpu::dtype_of(s_type), first, no_prox,
                           cpu::AdanConsts{clip, beta1, beta2, beta3, 1.0 - beta1, 1.0 - beta2, 1.0 - beta3,
                                           lr / bias_correction1, lr * beta2 / bias_correction2,
                                           bias_correction3_sqrt, eps,
                                           no_prox ? 1.0 - lr * weight_decay : 1.0 + lr * weight_decay}};
  const cpu::AdanSliceFn kernel = cpu::adan_slice();
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const TensorPtrs& t = ptrs[work[w].tensor];
      kernel(step, {t.p, t.g, t.m, t.n, t.v, t.q, work[w].begin, work[w].end});
    }
  });
}

// The global L2 norm of the gradients for Adan's clipping and finiteness test, in one parallel pass
// over all tensors (torch._foreach_norm on CPU runs one reduction per tensor). Chunk partial sums are
// added in a fixed order, so the result does not depend on the thread count.
at::Tensor multi_tensor_l2_norm_cpu(at::TensorList tensors) {
  std::vector<at::Tensor> dense;
  std::vector<WorkItem> work;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.is_cpu(), "tensors[", i, "] is on ", t.device(), "; this is the CPU kernel");
    MDT_CHECK_FLOAT(t);
    // Any dense layout will do (order does not matter for a sum); anything else is copied.
    dense.push_back(t.numel() <= 1 || t.is_non_overlapping_and_dense() ? t : t.contiguous());
    for (int64_t b = 0; b < t.numel(); b += kChunk)
      work.push_back({static_cast<int64_t>(i), b, std::min(t.numel(), b + kChunk)});
  }
  std::vector<double> partial(work.size());
  const cpu::SumSquaresFn sum_squares = cpu::sum_squares();
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const WorkItem& it = work[w];
      const at::Tensor& t = dense[it.tensor];
      partial[w] = sum_squares(cpu::dtype_of(t.scalar_type()), static_cast<const char*>(t.const_data_ptr()) +
                                                              it.begin * t.element_size(), it.end - it.begin);
    }
  });
  double total = 0.0;
  for (const double v : partial) total += v;
  return at::scalar_tensor(static_cast<float>(std::sqrt(total)), at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // One fused Adan step over many parameters, in place: g = clip_coef * grad, first: d = 0 (else
  // d = g + neg_pre_grad), then m, n, v, params and neg_pre_grad = -g (see mdt_kernels/ops/adan.py).
  // Lists are index-aligned; params/grads share a dtype, the four states share float32 or that dtype.
  // A non-finite clip_coef (one-element float32 tensor on the params' device) leaves everything as is.
  m.def(
      "adan_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, "
      "Tensor(d!)[] exp_avg_diff, Tensor(e!)[] neg_pre_grad, Tensor clip_coef, float lr, float beta1, float beta2, "
      "float beta3, float bias_correction1, float bias_correction2, float bias_correction3_sqrt, float eps, "
      "float weight_decay, bool no_prox, bool first) -> ()");
  // sqrt(sum over all tensors of sum(x^2)) as a 0-d float32 tensor (Adan's global gradient norm). CPU
  // only: on CUDA, torch._foreach_norm is already one multi-tensor kernel.
  m.def("multi_tensor_l2_norm(Tensor[] tensors) -> Tensor");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("adan_step_", &adan_step_cpu);
  m.impl("multi_tensor_l2_norm", &multi_tensor_l2_norm_cpu);
}

}  // namespace mdt
