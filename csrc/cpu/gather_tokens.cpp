// gather_tokens on CPU: a row copy per kept token forward; backward writes every output row once
// (copy on first hit, add on later hits of duplicate ids, zero for rows never hit), so the gradient
// costs one pass over (B,N,D) with no zero-fill pass and is deterministic.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "ops/gather_tokens.h"

namespace mdt {
namespace {

at::Tensor gather_tokens_cpu(const at::Tensor& x_in, const at::Tensor& ids_in) {
  check_gather_tokens(x_in, ids_in);
  const auto x = x_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2), K = ids.size(1);
  check_ids_range_cpu(ids, N, "ids");
  auto out = at::empty({B, K, D}, x.options());
  if (out.numel() == 0) return out;
  const size_t row_bytes = static_cast<size_t>(D) * x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(D, 1));
  at::parallel_for(0, B * K, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / K;
      std::memcpy(dst + r * row_bytes, src + (b * N + id[r]) * row_bytes, row_bytes);
    }
  });
  return out;
}

template <typename T>
void add_row(T* dst, const T* src, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(static_cast<float>(dst[d]) + static_cast<float>(src[d]));
}
template <>
void add_row<double>(double* dst, const double* src, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
}

at::Tensor gather_tokens_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids_in, c10::SymInt num_tokens) {
  check_gather_tokens_backward(grad_in, ids_in);
  const auto grad = grad_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = grad.size(0), K = grad.size(1), D = grad.size(2);
  const int64_t N = num_tokens.expect_int();
  check_ids_range_cpu(ids, N, "ids");
  auto dx = at::empty({B, N, D}, grad.options());
  if (dx.numel() == 0) return dx;
  const int64_t* id = ids.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gather_tokens_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* out = dx.data_ptr<scalar_t>();
    // One task per sample: the rows of a sample are touched by exactly one thread, in k order.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<char> hit(N);
      for (int64_t b = begin; b < end; ++b) {
        std::fill(hit.begin(), hit.end(), 0);
        scalar_t* ob = out + b * N * D;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t n = id[b * K + k];
          const scalar_t* src = g + (b * K + k) * D;
          if (!hit[n]) {
            std::memcpy(ob + n * D, src, D * sizeof(scalar_t));
            hit[n] = 1;
          } else {
            add_row(ob + n * D, src, D);
          }
        }
        for (int64_t n = 0; n < N; ++n)
          if (!hit[n]) std::memset(ob + n * D, 0, D * sizeof(scalar_t));
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // out[b,k] = x[b, ids[b,k]]
  m.def("gather_tokens(Tensor x, Tensor ids) -> Tensor");
  // dx[b,n] = sum_{k: ids[b,k]==n} grad[b,k]
  m.def("gather_tokens_backward(Tensor grad, Tensor ids, SymInt num_tokens) -> Tensor");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("gather_tokens_backward", &gather_tokens_backward_cpu);
}

}  // namespace mdt
