// The module mdt_kernels._C. Each op defines its schemas next to its CPU kernel (csrc/cpu/<op>.cpp,
// TORCH_LIBRARY_FRAGMENT) and registers its kernels per dispatch key there and in csrc/cuda/<op>.cpp;
// fake tensor and autograd rules live in mdt_kernels/ops/<op>.py, with the Triton twins.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import mdt_kernels._C` loads this shared library, which runs the static registrations of every op.
// No pybind11: the ops are reached through torch.ops.mdt_kernels.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// Claims the namespace for this library (a second TORCH_LIBRARY(mdt_kernels) elsewhere fails to load).
TORCH_LIBRARY(mdt_kernels, m) {}
