// masked_rel_pos_bias on CPU: the per-sample (B,H,K,K) bias of MDT's masked encoder straight from
// the (R,H) table, instead of building (B,H,N,N) and gathering rows then columns.
// A row i of sample b reads table[A(ids[b,i]) - L(ids[b,j]), h] for j = 0..K-1 (rel_pos_offsets.h).
// Backward scatters grad into the table. Work is split into fixed (head, batch-chunk) items, each with
// its own fp32/fp64 accumulator, reduced in chunk order: deterministic for any thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/masked_rel_pos_bias.h"
#include "rel_pos_offsets.h"

namespace mdt {
namespace {

constexpr int64_t kBatchChunk = 4;

at::Tensor masked_rel_pos_bias_cpu(const at::Tensor& table_in, int64_t grid_size, const at::Tensor& ids_in) {
  check_masked_rel_pos_bias(table_in, grid_size, ids_in);
  const auto ids = ids_in.contiguous();
  check_ids_range_cpu(ids, grid_size * grid_size, "ids_keep");
  const int64_t G = grid_size;
  const int64_t B = ids.size(0), K = ids.size(1), H = table_in.size(1), R = table_in.size(0);
  auto out = at::empty({B, H, K, K}, table_in.options());
  if (out.numel() == 0) return out;
  const auto tableT = table_in.t().contiguous();  // (H, R): one head's column is contiguous
  const auto off = rel_pos_offsets(ids, G);
  const std::vector<int32_t>&A = off.A, &L = off.L;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table_in.scalar_type(), "masked_rel_pos_bias_cpu", [&] {
    const scalar_t* t = tableT.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(K, 1));
    at::parallel_for(0, B * H * K, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t i = r % K, bh = r / K, h = bh % H, b = bh / H;
        const scalar_t* col = t + h * R + A[b * K + i];
        const int32_t* Lb = L.data() + b * K;
        scalar_t* dst = o + r * K;
        for (int64_t j = 0; j < K; ++j) dst[j] = col[-Lb[j]];
      }
    });
  });
  return out;
}

at::Tensor masked_rel_pos_bias_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids_in, int64_t grid_size,
                                            c10::SymInt num_rel) {
  const int64_t R = num_rel.expect_int();
  check_masked_rel_pos_bias_backward(grad_in, ids_in, grid_size, R);
  const auto ids = ids_in.contiguous();
  check_ids_range_cpu(ids, grid_size * grid_size, "ids_keep");
  const auto grad = grad_in.contiguous();
  const int64_t B = grad.size(0), H = grad.size(1), K = grad.size(2);
  const int64_t G = grid_size;
  const auto off = rel_pos_offsets(ids, G);
  const std::vector<int32_t>&A = off.A, &L = off.L;
  const int64_t n_chunks = (B + kBatchChunk - 1) / kBatchChunk;
  at::Tensor d_table;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "masked_rel_pos_bias_backward_cpu",
                                  [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    // partial[chunk][h][R]
    std::vector<opmath_t> partial(static_cast<size_t>(std::max<int64_t>(n_chunks, 1) * H * R), opmath_t(0));
    at::parallel_for(0, n_chunks * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item / H, h = item % H;
        opmath_t* acc = partial.data() + (chunk * H + h) * R;
        for (int64_t b = chunk * kBatchChunk; b < std::min(B, (chunk + 1) * kBatchChunk); ++b) {
          const int32_t* Lb = L.data() + b * K;
          for (int64_t i = 0; i < K; ++i) {
            opmath_t* row = acc + A[b * K + i];
            const scalar_t* gr = g + ((b * H + h) * K + i) * K;
            for (int64_t j = 0; j < K; ++j) row[-Lb[j]] += static_cast<opmath_t>(gr[j]);
          }
        }
      }
    });
    for (int64_t chunk = 1; chunk < n_chunks; ++chunk)
      for (int64_t e = 0; e < H * R; ++e) partial[e] += partial[chunk * H * R + e];
    auto acc = at::empty({H, R}, grad.options().dtype(c10::CppTypeToScalarType<opmath_t>::value));
    std::copy(partial.begin(), partial.begin() + H * R, acc.data_ptr<opmath_t>());
    d_table = acc.t().to(grad.scalar_type()).contiguous();
  });
  return d_table;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // out[b,h,i,j] = table[idx(ids[b,i], ids[b,j]), h] on a grid_size x grid_size token grid
  m.def("masked_rel_pos_bias(Tensor table, int grid_size, Tensor ids_keep) -> Tensor");
  // d_table (num_rel, H), accumulated deterministically on CPU
  m.def("masked_rel_pos_bias_backward(Tensor grad, Tensor ids_keep, int grid_size, SymInt num_rel) -> Tensor");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("masked_rel_pos_bias", &masked_rel_pos_bias_cpu);
  m.impl("masked_rel_pos_bias_backward", &masked_rel_pos_bias_backward_cpu);
}

}  // namespace mdt
