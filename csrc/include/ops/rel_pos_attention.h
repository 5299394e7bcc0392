// Shape/dtype/device checks of rel_pos_attention (attention with MDT's relative-position bias on the
// packed qkv projection), shared by its kernels.
#pragma once
#include "mdt_checks.h"
#include "ops/masked_rel_pos_bias.h"

namespace mdt {

// qkv (B, K, 3, H, Dh), table (R, H), ids (B, K) int64.
inline void check_rel_pos_attention(const at::Tensor& qkv, const at::Tensor& table, int64_t grid_size,
                                    const at::Tensor& ids) {
  MDT_CHECK_DIM(qkv, 5);
  MDT_CHECK_FLOAT(qkv);
  MDT_CHECK_DIM(table, 2);
  MDT_CHECK_FLOAT(table);
  MDT_CHECK_SAME_DEVICE(qkv, table);
  MDT_CHECK_SAME_DEVICE(qkv, ids);
  check_rel_pos_common(ids, grid_size, table.size(0));
  TORCH_CHECK_VALUE(qkv.size(2) == 3, "qkv must have shape (B, K, 3, H, Dh), got ", qkv.sizes());
  TORCH_CHECK_VALUE(table.size(1) == qkv.size(3), "table has ", table.size(1), " heads but qkv has ", qkv.size(3));
  TORCH_CHECK_VALUE(ids.size(0) == qkv.size(0) && ids.size(1) == qkv.size(1), "ids_keep shape ", ids.sizes(),
                    " does not match qkv (B, K) = (", qkv.size(0), ", ", qkv.size(1), ")");
}

// stats (B, H, K, 2): the forward's row max and reciprocal sum of the softmax.
inline void check_rel_pos_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv,
                                             const at::Tensor& table, const at::Tensor& stats, const at::Tensor& ids,
                                             int64_t grid_size) {
  MDT_CHECK_DIM(qkv, 5);
  MDT_CHECK_FLOAT(qkv);
  MDT_CHECK_FLOAT(grad_out);
  MDT_CHECK_DIM(table, 2);
  MDT_CHECK_FLOAT(table);
  MDT_CHECK_SAME_DEVICE(qkv, grad_out);
  MDT_CHECK_SAME_DEVICE(qkv, table);
  MDT_CHECK_SAME_DEVICE(qkv, stats);
  MDT_CHECK_SAME_DEVICE(qkv, ids);
  check_rel_pos_common(ids, grid_size, table.size(0));
  const int64_t B = qkv.size(0), K = qkv.size(1), H = qkv.size(3), Dh = qkv.size(4);
  TORCH_CHECK_VALUE(qkv.size(2) == 3, "qkv must have shape (B, K, 3, H, Dh), got ", qkv.sizes());
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({B, K, H, Dh}), "grad_out shape ", grad_out.sizes(),
                    " does not match qkv ", qkv.sizes());
  TORCH_CHECK_VALUE(table.size(1) == H, "table has ", table.size(1), " heads but qkv has ", H);
  TORCH_CHECK_VALUE(stats.sizes() == at::IntArrayRef({B, H, K, 2}), "stats shape ", stats.sizes(),
                    " does not match qkv ", qkv.sizes());
  TORCH_CHECK_VALUE(ids.size(0) == B && ids.size(1) == K, "ids_keep shape ", ids.sizes(), " does not match qkv");
}

}  // namespace mdt
