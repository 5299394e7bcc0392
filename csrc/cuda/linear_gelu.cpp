// torch binding of the linear_gelu CUDA kernels (built only against a CUDA torch). The GEMMs are ATen's
// (cuBLAS, on the inputs' dtype): h = x W^T; backward dx = dh W, dW = dh^T x. Shapes, saved h and
// results as in the CPU kernel (csrc/cpu/linear_gelu.cpp).
#include <torch/library.h>

#include "linear_gelu_kernels.h"
#include "mdt_cuda_binding.h"
#include "ops/adaln.h"
#include "ops/linear_gelu.h"

namespace mdt {
namespace {

// -> (y (..., Dout), h (rows, Dout))
std::tuple<at::Tensor, at::Tensor> linear_gelu_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                    const at::Tensor& bias) {
  check_linear_gelu(x, weight, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto h = at::mm(linear_as_rows(x), weight.t()).contiguous();  // (M, Dout); contiguous already
  const auto b = bias.contiguous();
  const int64_t M = h.size(0), D = h.size(1);
  auto y = at::empty({M, D}, h.options());
  if (h.numel() > 0) {
    MDT_DISPATCH_FLOATS(h.scalar_type(), "linear_gelu", [&] {
      using T = device_t<scalar_t>;
      LinearGeluArgs<T> a;
      a.h = ptr<const T>(h);
      a.bias = ptr<const T>(b);
      a.y = ptr<T>(y);
      a.M = M, a.D = D;
      check_launch(launch_linear_gelu_fwd(a, current_stream()), "linear_gelu");
    });
  }
  return {y.view(linear_out_shape(x, weight.size(0))), h};
}

// -> (dx, dweight, dbias)
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_gelu_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         const at::Tensor& bias, const at::Tensor& h) {
  check_linear_gelu_backward(grad, x, weight, bias, h);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto x2 = linear_as_rows(x);
  const auto g = linear_as_rows(grad);
  const auto hc = h.contiguous();
  const auto b = bias.contiguous();
  const int64_t M = hc.size(0), D = hc.size(1);
  auto dh = at::empty({M, D}, hc.options());
  at::Tensor db;
  if (hc.numel() > 0) {
    db = at::empty({D}, b.options());
    auto work = at::empty({linear_gelu_bwd_workspace(M, D)}, hc.options().dtype(adaln::acc_dtype(hc)));
    MDT_DISPATCH_FLOATS(hc.scalar_type(), "linear_gelu_backward", [&] {
      using T = device_t<scalar_t>;
      using A = typename Acc<T>::type;
      LinearGeluBwdArgs<T> a;
      a.grad = ptr<const T>(g);
      a.h = ptr<const T>(hc);
      a.bias = ptr<const T>(b);
      a.dh = ptr<T>(dh);
      a.dbias = ptr<T>(db);
      a.workspace = ptr<A>(work);
      a.M = M, a.D = D;
      check_launch(launch_linear_gelu_bwd(a, current_stream()), "linear_gelu_backward");
    });
  } else {
    db = at::zeros({D}, b.options());  // no rows (or no columns): nothing to sum
  }
  const auto dx = at::mm(dh, weight).view(x.sizes());
  const auto dw = at::mm(dh.t(), x2);
  return {dx, dw, db};
}

}  // namespace

MDT_CUDA_IMPL(m) {
  m.impl("linear_gelu", &linear_gelu_cuda);
  m.impl("linear_gelu_backward", &linear_gelu_backward_cuda);
}

}  // namespace mdt
