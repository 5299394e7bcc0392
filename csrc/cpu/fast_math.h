// Branch-free exp and tanh for fp32 that GCC vectorises inside `#pragma omp simd` loops (with
// -fno-trapping-math, set in setup.py), used where a loop is bound by them rather than by memory.
// fp64 overloads call libm (fp64 runs only in tests).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mdt {
namespace fast {

// e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2, and Cephes' degree-6 polynomial for e^r
// (~1 ulp). x is clamped to [-87, 88], where 2^n stays a normal float: e^-87 ~ 1.6e-38 stands in for
// anything smaller, and inputs here never exceed 88.
inline float exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp(double x) { return std::exp(x); }

// tanh z = 1 - 2 / (e^{2z} + 1): absolute error ~1e-7 (fine where tanh is added to 1, as in GELU),
// exactly +-1 once e^{2z} saturates.
inline float tanh(float z) { return 1.0f - 2.0f / (fast::exp(2.0f * z) + 1.0f); }
inline double tanh(double z) { return std::tanh(z); }

// GELU with the tanh approximation: u/2 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))).
template <typename A>
inline A gelu_tanh(A u) {
  constexpr A k0 = A(0.7978845608028654), k1 = A(0.044715);
  return A(0.5) * u * (A(1) + fast::tanh(k0 * (u + k1 * u * u * u)));
}

}  // namespace fast
}  // namespace mdt
