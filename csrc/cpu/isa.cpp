// Capability detection and selection for csrc/cpu/isa.h, and the ops that report and set it.
#include "isa.h"

#include <ATen/cpu/Utils.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#include <sys/prctl.h>
#ifndef HWCAP_SVE
#define HWCAP_SVE (1 << 22)
#endif
#ifndef PR_SVE_GET_VL
#define PR_SVE_GET_VL 51
#define PR_SVE_VL_LEN_MASK 0xffff
#endif
#endif

namespace mdt::isa {
namespace {

constexpr int kUnset = -1;
std::atomic<int> g_capability{kUnset};

bool cpu_has(const std::unordered_map<std::string, c10::IValue>& caps, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    const auto it = caps.find(key);
    if (it == caps.end() || !it->second.isBool() || !it->second.toBool()) return false;
  }
  return true;
}

// The best capability that this build has and this CPU runs (cpuinfo, as ATen: it also checks that the
// OS saves the AVX/AVX-512 registers).
Capability best() {
  static const Capability b = [] {
    Capability c = Capability::kDefault;
#if defined(__x86_64__) || defined(_M_X64)
    const auto caps = at::cpu::get_cpu_capabilities();
#if defined(MDT_CPU_CAPABILITY_AVX2)
    if (cpu_has(caps, {"avx2", "fma3", "f16c"})) c = Capability::kAVX2;
#endif
#if defined(MDT_CPU_CAPABILITY_AVX512)
    if (c == Capability::kAVX2 && cpu_has(caps, {"avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"}))
      c = Capability::kAVX512;
#endif
#elif defined(__aarch64__) && defined(__linux__) && defined(MDT_CPU_CAPABILITY_SVE256)
    // SVE, with this thread's vector length 32 bytes: the SVE256 copies are compiled for exactly that
    // length (-msve-vector-bits=256), as ATen's SVE256 kernels are.
    if ((getauxval(AT_HWCAP) & HWCAP_SVE) != 0 && (prctl(PR_SVE_GET_VL) & PR_SVE_VL_LEN_MASK) == 32)
      c = Capability::kSVE256;
#endif
    return c;
  }();
  return b;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// nullopt for a name that is not one of this architecture's.
std::optional<Capability> parse(const std::string& s) {
  const std::string v = lower(s);
  if (v == "default") return Capability::kDefault;
#if defined(__aarch64__)
  if (v == "sve256") return Capability::kSVE256;
#else
  if (v == "avx2") return Capability::kAVX2;
  if (v == "avx512") return Capability::kAVX512;
#endif
  return std::nullopt;
}

// A capability of ours on another architecture.
bool other_architecture(const std::string& s) {
  const std::string v = lower(s);
  return !parse(v).has_value() && (v == "avx2" || v == "avx512" || v == "sve256");
}

constexpr const char* kChoices =
#if defined(__aarch64__)
    "default or sve256";
#else
    "default, avx2 or avx512";
#endif

// The capability from the environment: MDT_KERNELS_CPU_CAPABILITY (an unknown value is an error),
// else ATEN_CPU_CAPABILITY (values of other architectures, which ATen knows, are ignored), capped at
// best(); a cap above what the CPU runs is no cap.
Capability from_environment() {
  if (const char* ours = std::getenv("MDT_KERNELS_CPU_CAPABILITY"); ours != nullptr && *ours != '\0') {
    if (other_architecture(ours)) return Capability::kDefault;  // a cluster-wide setting: the baseline here
    const auto c = parse(ours);
    TORCH_CHECK_VALUE(c.has_value(), "MDT_KERNELS_CPU_CAPABILITY: unknown CPU capability \"", ours,
                      "\"; choose ", kChoices);
    return std::min(*c, best());
  }
  if (const char* aten = std::getenv("ATEN_CPU_CAPABILITY"); aten != nullptr && *aten != '\0') {
    if (const auto c = parse(aten)) return std::min(*c, best());
  }
  return best();
}

}  // namespace

Capability capability() {
  int c = g_capability.load(std::memory_order_relaxed);
  if (c == kUnset) {
    int expected = kUnset;
    g_capability.compare_exchange_strong(expected, static_cast<int>(from_environment()));
    c = g_capability.load(std::memory_order_relaxed);
  }
  return static_cast<Capability>(c);
}

std::vector<Capability> supported() {
  std::vector<Capability> out;
  for (int c = 0; c <= static_cast<int>(best()); ++c) out.push_back(static_cast<Capability>(c));
  return out;
}

void set_capability(const std::string& s) {
  const auto c = parse(s);
  TORCH_CHECK_VALUE(c.has_value() || other_architecture(s), "unknown CPU capability \"", s, "\"; choose ", kChoices);
  TORCH_CHECK_VALUE(c.has_value() && *c <= best(), "CPU capability \"", s, "\" is not available: this build and CPU run up to \"",
                    name(best()), "\"");
  g_capability.store(static_cast<int>(*c), std::memory_order_relaxed);
}

const char* name(Capability c) {
  switch (c) {
#if defined(__aarch64__)
    case Capability::kSVE256:
      return "sve256";
#else
    case Capability::kAVX2:
      return "avx2";
    case Capability::kAVX512:
      return "avx512";
#endif
    default:
      return "default";
  }
}

}  // namespace mdt::isa

namespace {

std::string cpu_capability() { return mdt::isa::name(mdt::isa::capability()); }

std::vector<std::string> cpu_capabilities() {
  std::vector<std::string> out;
  for (const auto c : mdt::isa::supported()) out.emplace_back(mdt::isa::name(c));
  return out;
}

void set_cpu_capability(std::string name) { mdt::isa::set_capability(name); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // The instruction set of the vectorised CPU kernels (isa.h): the one in use ("default", "avx2" or
  // "avx512" on x86-64, "default" or "sve256" on aarch64), every one this build and CPU run, and its setter.
  m.def("cpu_capability() -> str");
  m.def("cpu_capabilities() -> str[]");
  m.def("set_cpu_capability(str name) -> ()");
}

// No tensor arguments: one kernel for every dispatch key.
TORCH_LIBRARY_IMPL(mdt_kernels, CompositeExplicitAutograd, m) {
  m.impl("cpu_capability", &cpu_capability);
  m.impl("cpu_capabilities", &cpu_capabilities);
  m.impl("set_cpu_capability", &set_cpu_capability);
}
