// Every mdt_kernels:: op schema (csrc/include/mdt_schemas.h). Kernels register against these per dispatch key
// (csrc/cpu/<op>.cpp for CPU, csrc/cuda/<op>.cpp for CUDA); fake tensor and autograd rules live in
// mdt_kernels/ops/<op>.py. The Triton variants are Python custom ops defined in those same files.
#include <Python.h>
#include <torch/library.h>

#include "mdt_schemas.h"

extern "C" {
// `import mdt_kernels._C` loads this shared library, which runs the static registrations below.
// No pybind11: the ops are reached through torch.ops.mdt_kernels.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mdt_kernels, m) { mdt::define_ops(m); }
