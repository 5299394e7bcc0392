// mdt_kernels._C_sim: the CUDA bindings (csrc/cuda/<op>.cpp) and kernels (csrc/cuda/*_kernels.cu) built for
// the host execution layer (simt.h), registered as mdt_kernels_sim::* for CPU tensors. Test-only: the
// cuda_sim backend of mdt_kernels/_dispatch.py, loaded when MDT_KERNELS_SIM=1.
#include <Python.h>
#include <torch/library.h>

#include "mdt_schemas.h"

#ifndef MDT_SIM_MODULE
#define MDT_SIM_MODULE _C_sim  // _C_sim_asan for the sanitizer build
#endif
#define MDT_CAT(a, b) a##b
#define MDT_XCAT(a, b) MDT_CAT(a, b)
#define MDT_STR(a) #a
#define MDT_XSTR(a) MDT_STR(a)

extern "C" {
PyObject* MDT_XCAT(PyInit_, MDT_SIM_MODULE)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, MDT_XSTR(MDT_SIM_MODULE), nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mdt_kernels_sim, m) { mdt::define_ops(m); }
