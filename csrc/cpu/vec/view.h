// What crosses the boundary between an op's code (compiled once) and its vectorised kernels (compiled
// per instruction set, csrc/cpu/isa.h): element types and strided views of tensors, no ATen types, so
// the kernels' files include only light headers (at::vec, ATen/Parallel.h).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "isa.h"

namespace mdt::cpu {

enum class Dtype : int8_t { kFloat32, kFloat64, kFloat16, kBFloat16 };

// A tensor of up to 4 dimensions as a pointer, sizes and strides (an undefined tensor: data == nullptr,
// ndim == -1). The accessors mirror at::Tensor's, so kernel code reads the same either way.
struct View {
  void* data = nullptr;
  Dtype dtype = Dtype::kFloat32;
  int64_t ndim = -1;
  int64_t sizes[4] = {0, 0, 0, 0};
  int64_t strides[4] = {0, 0, 0, 0};

  bool defined() const { return ndim >= 0; }
  int64_t size(int64_t i) const { return sizes[i < 0 ? i + ndim : i]; }
  int64_t stride(int64_t i) const { return strides[i < 0 ? i + ndim : i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t i = 0; i < ndim; ++i) n *= sizes[i];
    return n;
  }
  template <typename T>
  const T* const_data_ptr() const {
    return static_cast<const T*>(data);
  }
  template <typename T>
  T* data_ptr() const {
    return static_cast<T*>(data);
  }
};

// Calls f with a value of the C++ type of d.
template <typename F>
inline void with_type(Dtype d, F&& f) {
  switch (d) {
    case Dtype::kFloat32:
      return f(float{});
    case Dtype::kFloat64:
      return f(double{});
    case Dtype::kFloat16:
      return f(c10::Half{});
    case Dtype::kBFloat16:
      return f(c10::BFloat16{});
  }
}

}  // namespace mdt::cpu
