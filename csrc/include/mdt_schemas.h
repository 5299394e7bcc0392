// Every mdt_kernels op schema, in one place: defined for mdt_kernels (csrc/registration.cpp) and, with the
// same signatures, for mdt_kernels_sim, the test-only cuda_sim backend (csrc/simt/registration.cpp).
#pragma once
#include <torch/library.h>

namespace mdt {

inline void define_ops(torch::Library& m) {
  // out[b,k] = x[b, ids[b,k]]
  m.def("gather_tokens(Tensor x, Tensor ids) -> Tensor");
  // dx[b,n] = sum_{k: ids[b,k]==n} grad[b,k]
  m.def("gather_tokens_backward(Tensor grad, Tensor ids, SymInt num_tokens) -> Tensor");
  // out[b,n] = (n kept at k ? x_kept[b,k] : mask_token) + pos_embed[n]
  m.def("unmask_tokens(Tensor x_kept, Tensor ids_keep, Tensor mask_token, SymInt num_tokens, Tensor? pos_embed) -> Tensor");
  // -> (d_x_kept (B,K,D), d_mask_token (D,), d_pos_embed (N,D), or (0,D) when has_pos is false)
  m.def("unmask_tokens_backward(Tensor grad, Tensor ids_keep, bool has_pos) -> (Tensor, Tensor, Tensor)");
  // out[b,h,i,j] = table[idx(ids[b,i], ids[b,j]), h] on a grid_size x grid_size token grid
  m.def("masked_rel_pos_bias(Tensor table, int grid_size, Tensor ids_keep) -> Tensor");
  // d_table (num_rel, H), accumulated deterministically on CPU
  m.def("masked_rel_pos_bias_backward(Tensor grad, Tensor ids_keep, int grid_size, SymInt num_rel) -> Tensor");
  // Attention with that bias on the packed projection qkv (B,K,3,H,Dh) of the kept tokens:
  // out (B,K,H,Dh) = softmax(q k^T * scale + bias) v per (b,h); also returns each softmax row's max and
  // reciprocal sum, stats (B,H,K,2), fp32 (fp64 for fp64 qkv), from which the backward recomputes P.
  m.def("rel_pos_attention(Tensor qkv, Tensor table, int grid_size, Tensor ids_keep, float scale) -> (Tensor, Tensor)");
  // The same out without stats, for a forward no backward will follow (sampling under no_grad; CPU).
  m.def("rel_pos_attention_inference(Tensor qkv, Tensor table, int grid_size, Tensor ids_keep, float scale) -> Tensor");
  // -> (d_qkv (B,K,3,H,Dh) in qkv's dtype, d_table (R, H) in stats' dtype)
  m.def("rel_pos_attention_backward(Tensor grad_out, Tensor qkv, Tensor table, Tensor stats, Tensor ids_keep, int grid_size, float scale) -> (Tensor, Tensor)");
  // y = x W^T + b for x (..., Din), W (Dout, Din), b (Dout) or none: nn.Linear, on the CPU GEMM engine.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // -> (dx, dweight, dbias), dbias of shape (0,) when has_bias is false
  m.def("linear_backward(Tensor grad, Tensor x, Tensor weight, bool has_bias) -> (Tensor, Tensor, Tensor)");
  // The GEMM engine of the CPU kernels that multiply by a weight (csrc/cpu/gemm.h): the engine that runs
  // a dtype ("onednn" or "aten"), the setting in force and its setter ("auto", "onednn" or "aten").
  m.def("cpu_gemm_engine(ScalarType dtype) -> str");
  m.def("cpu_gemm_setting() -> str");
  m.def("set_cpu_gemm_engine(str name) -> ()");
  // The instruction set of the vectorised CPU kernels (csrc/cpu/isa.h): the one in use ("default",
  // "avx2" or "avx512"), every one this build and CPU run, and its setter.
  m.def("cpu_capability() -> str");
  m.def("cpu_capabilities() -> str[]");
  m.def("set_cpu_capability(str name) -> ()");
  // y = GELU_tanh(x W^T + b) for x (..., Din), W (Dout, Din), b (Dout); also returns h = x W^T as
  // (rows of x, Dout), saved for the backward.
  m.def("linear_gelu(Tensor x, Tensor weight, Tensor bias) -> (Tensor, Tensor)");
  // The same y without h, for a forward no backward will follow (sampling under no_grad; CPU).
  m.def("linear_gelu_inference(Tensor x, Tensor weight, Tensor bias) -> Tensor");
  // -> (dx, dweight, dbias)
  m.def("linear_gelu_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor h) -> (Tensor, Tensor, Tensor)");
  // out = LayerNorm_no_affine(x) * (1 + scale[:,None]) + shift[:,None]; x (B,N,D), shift/scale (B,D) any strides.
  // Also returns the per-row mean and rstd (B,N) in fp32 (fp64 for fp64 x), saved for the backward.
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor, Tensor)");
  // The same out without mean and rstd, for a forward no backward will follow (sampling; CPU).
  m.def("adaln_modulate_inference(Tensor x, Tensor shift, Tensor scale, float eps) -> Tensor");
  // -> (dx, dshift, dscale)
  m.def("adaln_modulate_backward(Tensor grad, Tensor x, Tensor scale, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)");
  // out = x + gate[:,None] * y
  m.def("gated_residual(Tensor x, Tensor gate, Tensor y) -> Tensor");
  // -> (dgate, dy); dx is grad itself
  m.def("gated_residual_backward(Tensor grad, Tensor gate, Tensor y) -> (Tensor, Tensor)");
  // -> (h, out, mean, rstd): h = x + gate[:,None] * y, out = adaln_modulate(h, shift, scale, eps)
  m.def("residual_adaln_modulate(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // -> (h, out) without mean and rstd, for a forward no backward will follow (sampling; CPU).
  m.def("residual_adaln_modulate_inference(Tensor x, Tensor gate, Tensor y, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor)");
  // -> (dx, dgate, dy, dshift, dscale); grad_h may be None (h unused)
  m.def("residual_adaln_modulate_backward(Tensor? grad_h, Tensor grad_out, Tensor h, Tensor y, Tensor gate, Tensor scale, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
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

}  // namespace mdt
