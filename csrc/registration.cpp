// Every mdt_kernels:: op schema, in one place. Kernels register against these per dispatch key
// (csrc/cpu/<op>.cpp for CPU, csrc/cuda/<op>.cpp for CUDA); fake tensor and autograd rules live in
// mdt_kernels/ops/<op>.py. The Triton variants are Python custom ops defined in those same files.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import mdt_kernels._C` loads this shared library, which runs the static registrations below.
// No pybind11: the ops are reached through torch.ops.mdt_kernels.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mdt_kernels, m) {
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
