// unmask_tokens on CPU: MDT's cat(mask tokens) + gather(ids_restore) + add(decoder_pos_embed) in one
// pass. A serial pre-pass builds the inverse map inv[b,n] (kept slot of position n, or -1), which
// also checks range and distinctness. Backward is one pass over grad: kept rows are copied to
// d_x_kept, masked rows are summed into d_mask_token, all rows into d_pos_embed. The sums run over
// fixed blocks of positions, reduced in a fixed order, so results do not depend on thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "ops/unmask_tokens.h"

namespace mdt {
namespace {

constexpr int64_t kRowsPerBlock = 8;

std::vector<int64_t> inverse_map(const at::Tensor& ids, int64_t N, bool check_distinct) {
  const int64_t B = ids.size(0), K = ids.size(1);
  const int64_t* id = ids.const_data_ptr<int64_t>();
  std::vector<int64_t> inv(static_cast<size_t>(B * N), -1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t n = id[b * K + k];
      TORCH_CHECK_INDEX(n >= 0 && n < N, "ids_keep holds ", n, " at [", b, ", ", k, "], outside [0, ", N, ")");
      TORCH_CHECK_VALUE(!check_distinct || inv[b * N + n] < 0, "ids_keep row ", b, " holds position ", n,
                        " twice; kept positions must be distinct");
      inv[b * N + n] = k;
    }
  }
  return inv;
}

at::Tensor unmask_tokens_cpu(const at::Tensor& xk_in, const at::Tensor& ids_in, const at::Tensor& mask_in,
                             c10::SymInt num_tokens, const std::optional<at::Tensor>& pos_in) {
  const int64_t N = num_tokens.expect_int();
  check_unmask_tokens(xk_in, ids_in, mask_in, N, pos_in);
  const int64_t B = xk_in.size(0), K = xk_in.size(1), D = xk_in.size(2);
  const bool has_pos = pos_in.has_value() && pos_in->defined();
  const auto xk = xk_in.contiguous();
  const auto ids = ids_in.contiguous();
  const auto mask = mask_in.contiguous();
  const auto pos = has_pos ? pos_in->contiguous() : at::Tensor();
  const auto inv = inverse_map(ids, N, /*check_distinct=*/true);
  auto out = at::empty({B, N, D}, xk.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xk.scalar_type(), "unmask_tokens_cpu", [&] {
    const scalar_t* xkp = xk.const_data_ptr<scalar_t>();
    const scalar_t* mp = mask.const_data_ptr<scalar_t>();
    const scalar_t* pp = has_pos ? pos.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(D, 1));
    at::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / N, n = r % N, k = inv[r];
        const scalar_t* src = k >= 0 ? xkp + (b * K + k) * D : mp;
        scalar_t* dst = op + r * D;
        if (pp == nullptr) {
          std::memcpy(dst, src, D * sizeof(scalar_t));
        } else {
          const scalar_t* pe = pp + n * D;
          for (int64_t d = 0; d < D; ++d)
            dst[d] = static_cast<scalar_t>(static_cast<at::opmath_type<scalar_t>>(src[d]) +
                                           static_cast<at::opmath_type<scalar_t>>(pe[d]));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unmask_tokens_backward_cpu(const at::Tensor& grad_in,
                                                                          const at::Tensor& ids_in, bool has_pos) {
  check_unmask_tokens_backward(grad_in, ids_in);
  const auto grad = grad_in.contiguous();
  const auto ids = ids_in.contiguous();
  const int64_t B = grad.size(0), N = grad.size(1), D = grad.size(2), K = ids.size(1);
  const auto inv = inverse_map(ids, N, /*check_distinct=*/false);
  auto d_xk = at::empty({B, K, D}, grad.options());
  auto d_pos = at::empty({has_pos ? N : 0, D}, grad.options());
  const int64_t n_blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor d_mask;
  // Sums run in opmath (fp32 for fp16/bf16/fp32, fp64 for fp64).
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "unmask_tokens_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dxk = d_xk.data_ptr<scalar_t>();
    scalar_t* dpos = has_pos ? d_pos.data_ptr<scalar_t>() : nullptr;
    std::vector<opmath_t> mask_partial(static_cast<size_t>(n_blocks * D), opmath_t(0));
    at::parallel_for(0, n_blocks, 1, [&](int64_t blk_begin, int64_t blk_end) {
      std::vector<opmath_t> pos_acc(has_pos ? D : 0);
      for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
        opmath_t* macc = mask_partial.data() + blk * D;
        for (int64_t n = blk * kRowsPerBlock; n < std::min(N, (blk + 1) * kRowsPerBlock); ++n) {
          std::fill(pos_acc.begin(), pos_acc.end(), opmath_t(0));
          for (int64_t b = 0; b < B; ++b) {
            const scalar_t* row = g + (b * N + n) * D;
            const int64_t k = inv[b * N + n];
            if (k >= 0) {
              std::memcpy(dxk + (b * K + k) * D, row, D * sizeof(scalar_t));
            } else {
              for (int64_t d = 0; d < D; ++d) macc[d] += static_cast<opmath_t>(row[d]);
            }
            if (has_pos)
              for (int64_t d = 0; d < D; ++d) pos_acc[d] += static_cast<opmath_t>(row[d]);
          }
          if (has_pos)
            for (int64_t d = 0; d < D; ++d) dpos[n * D + d] = static_cast<scalar_t>(pos_acc[d]);
        }
      }
    });
    for (int64_t blk = 1; blk < n_blocks; ++blk)
      for (int64_t d = 0; d < D; ++d) mask_partial[d] += mask_partial[blk * D + d];
    auto d_mask_acc = at::empty({D}, grad.options().dtype(c10::CppTypeToScalarType<opmath_t>::value));
    if (D > 0) {
      if (n_blocks > 0)
        std::memcpy(d_mask_acc.data_ptr<opmath_t>(), mask_partial.data(), D * sizeof(opmath_t));
      else
        d_mask_acc.zero_();
    }
    d_mask = d_mask_acc.to(grad.scalar_type());
  });
  return {d_xk, d_mask, d_pos};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // out[b,n] = (n kept at k ? x_kept[b,k] : mask_token) + pos_embed[n]
  m.def("unmask_tokens(Tensor x_kept, Tensor ids_keep, Tensor mask_token, SymInt num_tokens, Tensor? pos_embed) -> Tensor");
  // -> (d_x_kept (B,K,D), d_mask_token (D,), d_pos_embed (N,D), or (0,D) when has_pos is false)
  m.def("unmask_tokens_backward(Tensor grad, Tensor ids_keep, bool has_pos) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("unmask_tokens", &unmask_tokens_cpu);
  m.impl("unmask_tokens_backward", &unmask_tokens_backward_cpu);
}

}  // namespace mdt
