// The CPU GEMM engines of gemm.h, and the ops that report and select them.
#include "gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>

namespace mdt::gemm {
namespace {

enum class Engine : int { kUnset = -1, kOneDNN = 0, kATen = 1 };

std::atomic<int> g_engine{static_cast<int>(Engine::kUnset)};

// PyTorch's oneDNN linear, when this torch was built with oneDNN.
const c10::OperatorHandle* onednn_linear_op() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op.has_value() ? &*op : nullptr;
}

Engine parse(const std::string& name, const char* origin) {
  if (name == "onednn") {
    TORCH_CHECK_VALUE(onednn_linear_op() != nullptr, origin, ": the onednn CPU GEMM engine needs a PyTorch built ",
                      "with oneDNN (mkldnn::_linear_pointwise is not registered); use \"aten\"");
    return Engine::kOneDNN;
  }
  if (name == "aten") return Engine::kATen;
  TORCH_CHECK_VALUE(false, origin, ": unknown CPU GEMM engine \"", name, "\"; choose onednn or aten");
}

Engine engine() {
  int e = g_engine.load(std::memory_order_relaxed);
  if (e == static_cast<int>(Engine::kUnset)) {
    const char* env = std::getenv("MDT_KERNELS_CPU_GEMM");
    const Engine chosen = (env != nullptr && *env != '\0') ? parse(env, "MDT_KERNELS_CPU_GEMM")
                          : onednn_linear_op() != nullptr ? Engine::kOneDNN
                                                           : Engine::kATen;
    int expected = static_cast<int>(Engine::kUnset);
    g_engine.compare_exchange_strong(expected, static_cast<int>(chosen));
    e = g_engine.load(std::memory_order_relaxed);
  }
  return static_cast<Engine>(e);
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

}  // namespace

std::string engine_name() { return engine() == Engine::kOneDNN ? "onednn" : "aten"; }

void set_engine(const std::string& name) {
  g_engine.store(static_cast<int>(parse(name, "set_cpu_gemm_engine")), std::memory_order_relaxed);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  const auto dtype = x.scalar_type();
  if (engine() == Engine::kOneDNN && (dtype == at::kFloat || dtype == at::kBFloat16) && x.size(1) > 0 &&
      x.size(0) > 0 && w.size(0) > 0) {
    return onednn_linear(x, w, bias);
  }
  return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
}

}  // namespace mdt::gemm

namespace {

std::string cpu_gemm_engine() { return mdt::gemm::engine_name(); }

void set_cpu_gemm_engine(std::string name) { mdt::gemm::set_engine(name); }

}  // namespace

// No tensor arguments: one kernel for every dispatch key.
TORCH_LIBRARY_IMPL(mdt_kernels, CompositeExplicitAutograd, m) {
  m.impl("cpu_gemm_engine", &cpu_gemm_engine);
  m.impl("set_cpu_gemm_engine", &set_cpu_gemm_engine);
}
