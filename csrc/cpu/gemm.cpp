// The CPU GEMM engines of gemm.h, and the ops that report and select them.
#include "gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/Utils.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#include <mutex>

#include "isa.h"
#include "tensor_view.h"
#include "vec/gemm.h"

namespace mdt::gemm {
namespace {

enum class Setting : int { kUnset = -1, kAuto = 0, kOneDNN = 1, kATen = 2, kMDT = 3 };
enum class Engine { kATen, kOneDNN, kMDT };

std::atomic<int> g_setting{static_cast<int>(Setting::kUnset)};

// PyTorch's oneDNN linear, when this torch was built with oneDNN.
const c10::OperatorHandle* onednn_linear_op() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op.has_value() ? &*op : nullptr;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(w);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));  // no post-op
  stack.emplace_back(c10::impl::GenericList(c10::OptionalType::create(c10::NumberType::get())));
  stack.emplace_back(c10::IValue());  // algorithm: none
  onednn_linear_op()->callBoxed(&stack);
  return stack.back().toTensor();
}

// Whether oneDNN computes an inner product in this dtype on this CPU, under this process's oneDNN ISA
// cap: a 2x16x16 product with bias is run once per dtype and compared with ATen's. oneDNN raises (no
// primitive descriptor) for bf16 on CPUs without AVX-512; any such failure means "no".
bool onednn_runs_uncached(at::ScalarType dtype) {
  if (onednn_linear_op() == nullptr || (dtype != at::kFloat && dtype != at::kBFloat16)) return false;
  try {
    const auto opts = at::TensorOptions().dtype(dtype);
    const auto x = at::arange(32, opts).reshape({2, 16}).div_(16);
    const auto w = at::arange(256, opts).reshape({16, 16}).div_(256);
    const auto b = at::ones({16}, opts);
    const auto y = onednn_linear(x, w, b);
    return y.sizes() == at::IntArrayRef({2, 16}) &&
           at::allclose(y.to(at::kFloat), at::addmm(b, x, w.t()).to(at::kFloat), 2e-2, 2e-2);
  } catch (const std::exception&) {
    return false;
  }
}

bool onednn_runs(at::ScalarType dtype) {
  if (dtype == at::kFloat) {
    static const bool f32 = onednn_runs_uncached(at::kFloat);
    return f32;
  }
  if (dtype == at::kBFloat16) {
    static const bool bf16 = onednn_runs_uncached(at::kBFloat16);
    return bf16;
  }
  return false;
}

// Whether oneDNN may use its AVX-512 kernels here: the CPU has AVX-512 (F, BW, VL, DQ: oneDNN's
// avx512_core) and ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA) does not cap it below.
bool onednn_avx512() {
  const auto caps = at::cpu::get_cpu_capabilities();
  for (const char* key : {"avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"}) {
    const auto it = caps.find(key);
    if (it == caps.end() || !it->second.isBool() || !it->second.toBool()) return false;
  }
  for (const char* var : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    const char* cap = std::getenv(var);
    if (cap == nullptr || *cap == '\0') continue;
    std::string v(cap);
    for (auto& ch : v) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    return v == "ALL" || v == "DEFAULT" || v.rfind("AVX512", 0) == 0 || v.rfind("AVX10", 0) == 0;
  }
  return true;
}

// An AMD (or Hygon) CPU: MKL's sgemm does not take its tuned kernels there, oneDNN's JIT does.
bool amd_cpu() {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d) == 0) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  return std::strcmp(vendor, "AuthenticAMD") == 0 || std::strcmp(vendor, "HygonGenuine") == 0;
#else
  return false;
#endif
}

// Where `auto` takes an engine other than ATen. A row applies to GEMMs of its dtype, on AMD (or Hygon) CPUs
// only when amd_only, when `when` holds, and to the forward layout only (y = x w^T, not the backward's
// dx = g W) when forward_only; the first row that applies wins, an engine it cannot run (oneDNN without the
// dtype on this CPU) passing to the next row. Measurements: benchmarks/results/cpu_gemm_engine.md.
enum class When { kAlways, kAVX2Kernels, kOneDNNAVX512 };  // kAVX2Kernels: our kernels run at AVX2

struct AutoRow {
  at::ScalarType dtype;
  bool amd_only;
  When when;
  bool forward_only;
  Engine engine;
};

constexpr AutoRow kAutoRows[] = {
    // Our GEMM, bias in its epilogue, beat oneDNN and MKL on MDT's forward GEMMs; dx stays on ATen, as the
    // training step with dx on ours too was no faster.
    {at::kFloat, true, When::kAVX2Kernels, true, Engine::kMDT},
    // oneDNN's AVX-512 kernels beat MKL's sgemm, which takes its generic kernels on AMD CPUs.
    {at::kFloat, false, When::kOneDNNAVX512, false, Engine::kOneDNN},
    // Without them, oneDNN still beats MKL's generic kernels on AMD for the forward; not for dx, whose W it
    // reorders first.
    {at::kFloat, true, When::kAlways, true, Engine::kOneDNN},
    // ATen's bf16 mm calls oneDNN too, and then adds the bias in a pass of its own.
    {at::kBFloat16, false, When::kAlways, false, Engine::kOneDNN},
    // Everything else (fp32 on Intel CPUs without AVX-512, where MKL is tuned; fp16; fp64): ATen.
};

bool holds(When when) {
  switch (when) {
    case When::kAVX2Kernels:
#if defined(__aarch64__)
      return false;
#else
      return isa::capability() == isa::Capability::kAVX2;
#endif
    case When::kOneDNNAVX512: {
      static const bool avx512 = onednn_avx512();
      return avx512;
    }
    default:
      return true;
  }
}

Engine auto_engine(at::ScalarType dtype, bool forward_layout) {
  static const bool amd = amd_cpu();
  for (const AutoRow& row : kAutoRows) {
    if (row.dtype != dtype || (row.amd_only && !amd) || (row.forward_only && !forward_layout) || !holds(row.when))
      continue;
    if (row.engine == Engine::kOneDNN && !onednn_runs(dtype)) continue;
    return row.engine;
  }
  return Engine::kATen;
}

Setting parse(const std::string& name, const char* origin) {
  if (name == "onednn") {
    TORCH_CHECK_VALUE(onednn_linear_op() != nullptr, origin, ": the onednn CPU GEMM engine needs a PyTorch built ",
                      "with oneDNN (mkldnn::_linear_pointwise is not registered); use \"aten\" or \"auto\"");
    return Setting::kOneDNN;
  }
  if (name == "aten") return Setting::kATen;
  if (name == "mdt") return Setting::kMDT;
  if (name == "auto") return Setting::kAuto;
  TORCH_CHECK_VALUE(false, origin, ": unknown CPU GEMM engine \"", name, "\"; choose auto, mdt, onednn or aten");
}

Setting setting() {
  int s = g_setting.load(std::memory_order_relaxed);
  if (s == static_cast<int>(Setting::kUnset)) {
    const char* env = std::getenv("MDT_KERNELS_CPU_GEMM");
    const Setting chosen = (env != nullptr && *env != '\0') ? parse(env, "MDT_KERNELS_CPU_GEMM") : Setting::kAuto;
    int expected = static_cast<int>(Setting::kUnset);
    g_setting.compare_exchange_strong(expected, static_cast<int>(chosen));
    s = g_setting.load(std::memory_order_relaxed);
  }
  return static_cast<Setting>(s);
}

// forward_layout: w is (N, K) row-major, as in a forward y = x w^T (not the transposed view of dx = g W).
Engine engine(at::ScalarType dtype, bool forward_layout) {
  switch (setting()) {
    case Setting::kOneDNN:
      return onednn_runs(dtype) ? Engine::kOneDNN : Engine::kATen;
    case Setting::kMDT:
      return dtype == at::kFloat ? Engine::kMDT : Engine::kATen;
    case Setting::kAuto:
      return auto_engine(dtype, forward_layout);
    default:
      return Engine::kATen;
  }
}

// The engine for y = x w^T: ATen for an empty product, else engine() for w's layout.
Engine engine_for(const at::Tensor& x, const at::Tensor& w) {
  if (x.size(0) == 0 || x.size(1) == 0 || w.size(0) == 0) return Engine::kATen;
  return engine(x.scalar_type(), w.is_contiguous());
}

const char* engine_label(Engine e) {
  switch (e) {
    case Engine::kOneDNN:
      return "onednn";
    case Engine::kMDT:
      return "mdt";
    default:
      return "aten";
  }
}

// The profiler sees it as mdt_kernels::gemm_f32 (or gemm_f32_gelu), as oneDNN's as mkldnn::_linear_pointwise.
at::Tensor mdt_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, bool gelu) {
  RECORD_FUNCTION(gelu ? "mdt_kernels::gemm_f32_gelu" : "mdt_kernels::gemm_f32", std::vector<c10::IValue>());
  auto y = at::empty({x.size(0), w.size(0)}, x.options());
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  cpu::gemm_f32()(cpu::view(x), cpu::view(w), cpu::view(b), cpu::view(y), gelu);
  return y;
}

}  // namespace

std::string setting_name() {
  switch (setting()) {
    case Setting::kOneDNN:
      return "onednn";
    case Setting::kATen:
      return "aten";
    case Setting::kMDT:
      return "mdt";
    default:
      return "auto";
  }
}

void set_setting(const std::string& name) {
  g_setting.store(static_cast<int>(parse(name, "set_cpu_gemm_engine")), std::memory_order_relaxed);
}

std::string engine_name(at::ScalarType dtype) { return engine_label(engine(dtype, /*forward_layout=*/true)); }

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  switch (engine_for(x, w)) {
    case Engine::kOneDNN:
      return onednn_linear(x, w, bias);
    case Engine::kMDT:
      return mdt_linear(x, w, bias, /*gelu=*/false);
    default:
      return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  }
}

std::optional<at::Tensor> linear_gelu_tanh(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (engine_for(x, w) != Engine::kMDT) return std::nullopt;
  return mdt_linear(x, w, bias, /*gelu=*/true);
}

}  // namespace mdt::gemm

namespace {

std::string cpu_gemm_engine(at::ScalarType dtype) { return mdt::gemm::engine_name(dtype); }

std::string cpu_gemm_setting() { return mdt::gemm::setting_name(); }

void set_cpu_gemm_engine(std::string name) { mdt::gemm::set_setting(name); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // The GEMM engine of the CPU kernels that multiply by a weight (gemm.h): the engine that runs a dtype
  // ("mdt", "onednn" or "aten"), the setting in force and its setter ("auto", "mdt", "onednn" or "aten").
  m.def("cpu_gemm_engine(ScalarType dtype) -> str");
  m.def("cpu_gemm_setting() -> str");
  m.def("set_cpu_gemm_engine(str name) -> ()");
}

// No tensor arguments: one kernel for every dispatch key.
TORCH_LIBRARY_IMPL(mdt_kernels, CompositeExplicitAutograd, m) {
  m.impl("cpu_gemm_engine", &cpu_gemm_engine);
  m.impl("cpu_gemm_setting", &cpu_gemm_setting);
  m.impl("set_cpu_gemm_engine", &set_cpu_gemm_engine);
}
