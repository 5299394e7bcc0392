// Run-time instruction-set dispatch for the CPU kernels.
//
// The vectorised inner loops (csrc/cpu/vec/*.cpp) are compiled once per capability: DEFAULT (the
// compiler's portable baseline: SSE2 on x86-64, NEON on aarch64), AVX2 (+FMA, F16C) and AVX512 (F, BW,
// VL, DQ) on x86-64, SVE256 (SVE at a 256-bit vector length, at::vec's SVE types: Graviton3) on aarch64. Each copy sits in its own inline namespace (CPU_CAPABILITY, as ATen's at::vec) and
// publishes its entry points as constant-initialised function pointers named <kernel>_<CAPABILITY>; the
// op code (compiled once, for the baseline) calls the one for capability(). Nothing runs code of a
// capability the CPU lacks: the capability objects have no static initialisers (setup.py checks), and
// they are linked after the baseline objects, lowest capability first, so every inline function that
// several objects emit resolves to the lowest-capability copy.
//
// capability() is the best one that was compiled and that this CPU runs, capped by
// MDT_KERNELS_CPU_CAPABILITY (default|avx2|avx512 on x86-64, default|sve256 on aarch64; a name of the
// other architecture caps at DEFAULT), else by ATen's ATEN_CPU_CAPABILITY (other architectures' ignored); set_capability changes it for
// the process (mdt_kernels.use_cpu_capability), down to DEFAULT and up to what the CPU runs.
#pragma once
#include <string>
#include <vector>

namespace mdt::isa {

// Ordered within an architecture: a higher one runs only where the lower ones do.
#if defined(__aarch64__)
enum class Capability : int { kDefault = 0, kSVE256 = 1 };
#else
enum class Capability : int { kDefault = 0, kAVX2 = 1, kAVX512 = 2 };
#endif

// The capability the kernels use now.
Capability capability();

// Every capability this build has and this CPU runs, lowest first.
std::vector<Capability> supported();

// Sets capability() by name ("default", "avx2", "avx512", "sve256"); ValueError for an unknown name or one this
// build or CPU does not run.
void set_capability(const std::string& name);

const char* name(Capability c);

}  // namespace mdt::isa

// Declares the per-capability copies of a kernel entry point `name` of function-pointer type `type`,
// and `name()`, which returns the copy for the capability in use. Use at namespace scope of the same
// namespace that the vec/*.cpp file defines them in (MDT_DEFINE_KERNEL).
#define MDT_KERNEL_CAT_(a, b) a##_##b
#define MDT_KERNEL_CAT(a, b) MDT_KERNEL_CAT_(a, b)

#if defined(MDT_CPU_CAPABILITY_AVX512)
#define MDT_KERNEL_DECLARE_AVX512_(type, name) extern const type name##_AVX512;
#define MDT_KERNEL_PICK_AVX512_(name) \
  case ::mdt::isa::Capability::kAVX512: \
    return name##_AVX512;
#else
#define MDT_KERNEL_DECLARE_AVX512_(type, name)
#define MDT_KERNEL_PICK_AVX512_(name)
#endif
#if defined(MDT_CPU_CAPABILITY_AVX2)
#define MDT_KERNEL_DECLARE_AVX2_(type, name) extern const type name##_AVX2;
#define MDT_KERNEL_PICK_AVX2_(name) \
  case ::mdt::isa::Capability::kAVX2: \
    return name##_AVX2;
#else
#define MDT_KERNEL_DECLARE_AVX2_(type, name)
#define MDT_KERNEL_PICK_AVX2_(name)
#endif

#if defined(MDT_CPU_CAPABILITY_SVE256)
#define MDT_KERNEL_DECLARE_SVE256_(type, name) extern const type name##_SVE256;
#define MDT_KERNEL_PICK_SVE256_(name) \
  case ::mdt::isa::Capability::kSVE256: \
    return name##_SVE256;
#else
#define MDT_KERNEL_DECLARE_SVE256_(type, name)
#define MDT_KERNEL_PICK_SVE256_(name)
#endif

#define MDT_DECLARE_KERNEL(type, name)                  \
  extern const type name##_DEFAULT;                     \
  MDT_KERNEL_DECLARE_AVX2_(type, name)                  \
  MDT_KERNEL_DECLARE_AVX512_(type, name)                \
  MDT_KERNEL_DECLARE_SVE256_(type, name)                \
  inline type name() {                                  \
    switch (::mdt::isa::capability()) {                 \
      MDT_KERNEL_PICK_AVX2_(name)                       \
      MDT_KERNEL_PICK_AVX512_(name)                     \
      MDT_KERNEL_PICK_SVE256_(name)                     \
      default:                                          \
        return name##_DEFAULT;                          \
    }                                                   \
  }

// In a vec/*.cpp file (compiled with CPU_CAPABILITY defined): publishes `fn` as this capability's copy.
#define MDT_DEFINE_KERNEL(type, name, fn) extern const type MDT_KERNEL_CAT(name, CPU_CAPABILITY) = fn;
