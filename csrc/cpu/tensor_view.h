// at::Tensor -> cpu::View (vec/view.h), for the op code that calls the vectorised kernels.
#pragma once
#include <ATen/ATen.h>

#include "vec/view.h"

namespace mdt::cpu {

inline Dtype dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return Dtype::kFloat32;
    case at::kDouble:
      return Dtype::kFloat64;
    case at::kHalf:
      return Dtype::kFloat16;
    case at::kBFloat16:
      return Dtype::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "mdt_kernels CPU kernels: unsupported dtype ", t);
  }
}

// An undefined tensor gives an undefined view.
inline View view(const at::Tensor& t) {
  View v;
  if (!t.defined()) return v;
  TORCH_INTERNAL_ASSERT(t.dim() <= 4, "cpu::View holds up to 4 dimensions");
  v.data = const_cast<void*>(t.const_data_ptr());
  v.dtype = dtype_of(t.scalar_type());
  v.ndim = t.dim();
  for (int64_t i = 0; i < t.dim(); ++i) {
    v.sizes[i] = t.size(i);
    v.strides[i] = t.stride(i);
  }
  return v;
}

}  // namespace mdt::cpu
