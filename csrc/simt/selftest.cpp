// mdt_kernels_sim::simt_selftest(name, x): runs one of the layer's self-test kernels (selftest_kernels.cpp)
// through the same binding helpers as the ops; tests/test_simt.py checks the results and the errors.
#include <torch/library.h>

#include "mdt_cuda_binding.h"
#include "selftest_kernels.h"

namespace mdt {
namespace {

at::Tensor selftest(const std::string& name, const at::Tensor& x_in) {
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, "x must be float32");
  const auto x = x_in.contiguous();
  const int64_t n = x.numel();
  auto out = at::zeros({name == "block_sum" ? (n + 255) / 256 : 1024}, x.options());
  auto h = at::empty({n}, x.options().dtype(at::kHalf));
  auto b = at::empty({n}, x.options().dtype(at::kBFloat16));
  auto hs = at::zeros({1}, h.options());
  auto bs = at::zeros({1}, b.options());
  check_launch(launch_selftest(name.c_str(), x.const_data_ptr<float>(), n, out.data_ptr<float>(), h.data_ptr(),
                               b.data_ptr(), hs.data_ptr(), bs.data_ptr()),
               name.c_str());
  if (name == "half") return at::cat({h.view(at::kShort), b.view(at::kShort), hs.view(at::kShort), bs.view(at::kShort)});
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels_sim, m) { m.def("simt_selftest(str name, Tensor x) -> Tensor"); }
MDT_CUDA_IMPL(m) { m.impl("simt_selftest", &selftest); }

}  // namespace mdt
