// Capability detection and selection for csrc/cpu/isa.h, and the ops that report and set it.
#include "isa.h"

#include <ATen/cpu/Utils.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>

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
#endif
    return c;
  }();
  return b;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// nullopt for a name that is not one of ours.
std::optional<Capability> parse(const std::string& s) {
  const std::string v = lower(s);
  if (v == "default") return Capability::kDefault;
  if (v == "avx2") return Capability::kAVX2;
  if (v == "avx512") return Capability::kAVX512;
  return std::nullopt;
}

// The capability from the environment: MDT_KERNELS_CPU_CAPABILITY (an unknown value is an error),
// else ATEN_CPU_CAPABILITY (values of other architectures, which ATen knows, are ignored), capped at
// best(); a cap above what the CPU runs is no cap.
Capability from_environment() {
  if (const char* ours = std::getenv("MDT_KERNELS_CPU_CAPABILITY"); ours != nullptr && *ours != '\0') {
    const auto c = parse(ours);
    TORCH_CHECK_VALUE(c.has_value(), "MDT_KERNELS_CPU_CAPABILITY: unknown CPU capability \"", ours,
                      "\"; choose default, avx2 or avx512");
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
  TORCH_CHECK_VALUE(c.has_value(), "unknown CPU capability \"", s, "\"; choose default, avx2 or avx512");
  TORCH_CHECK_VALUE(*c <= best(), "CPU capability \"", s, "\" is not available: this build and CPU run up to \"",
                    name(best()), "\"");
  g_capability.store(static_cast<int>(*c), std::memory_order_relaxed);
}

const char* name(Capability c) {
  switch (c) {
    case Capability::kAVX2:
      return "avx2";
    case Capability::kAVX512:
      return "avx512";
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

// No tensor arguments: one kernel for every dispatch key.
TORCH_LIBRARY_IMPL(mdt_kernels, CompositeExplicitAutograd, m) {
  m.impl("cpu_capability", &cpu_capability);
  m.impl("cpu_capabilities", &cpu_capabilities);
  m.impl("set_cpu_capability", &set_cpu_capability);
}
