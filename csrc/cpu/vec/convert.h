// Rows between a tensor's element type and float registers or buffers, in at::vec: included only by
// the per-instruction-set kernel files (csrc/cpu/vec/*.cpp), inside their CPU_CAPABILITY namespace.
// 16-bit conversions round to nearest even, as c10's; they are vectorised on every instruction set.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();  // floats per register; blocks are 2 * kW elements

// 2 * kW elements of T at src as two float registers, and back.
template <typename T>
inline void load2(const T* src, Vec& a, Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = Vec::loadu(src);
    b = Vec::loadu(src + kW);
  } else {
    at::vec::load_to_float<T>(src, a, b);
  }
}
template <typename T>
inline void store2(T* dst, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(dst);
    b.store(dst + kW);
  } else {
    at::vec::convert_from_float<T>(a, b).store(dst);
  }
}

// dst[0:n] = src[0:n] converted (any pair of float/double/Half/BFloat16; vectorised from and to float).
template <typename S, typename D>
inline void convert_row(const S* src, D* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<D, float> && !std::is_same_v<S, double>) {
    for (; i + 2 * kW <= n; i += 2 * kW) {
      Vec a, b;
      load2(src + i, a, b);
      a.store(dst + i);
      b.store(dst + i + kW);
    }
  } else if constexpr (std::is_same_v<S, float> && !std::is_same_v<D, double>) {
    for (; i + 2 * kW <= n; i += 2 * kW) store2(dst + i, Vec::loadu(src + i), Vec::loadu(src + i + kW));
  }
  for (; i < n; ++i) dst[i] = static_cast<D>(src[i]);
}

}  // namespace CPU_CAPABILITY
}  // namespace mdt::cpu
