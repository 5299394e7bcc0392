// Shape/dtype/device checks of masked_rel_pos_bias, shared by the CPU and CUDA bindings.
#pragma once
#include "mdt_checks.h"

namespace mdt {

inline void check_rel_pos_common(const at::Tensor& ids, int64_t grid_size, int64_t num_rel) {
  MDT_CHECK_DIM(ids, 2);
  MDT_CHECK_IDS(ids);
  TORCH_CHECK_VALUE(grid_size >= 1, "grid_size must be >= 1, got ", grid_size);
  const int64_t W = 2 * grid_size - 1;
  TORCH_CHECK_VALUE(num_rel >= W * W, "table has ", num_rel, " rows, fewer than (2*grid_size-1)^2 = ", W * W,
                    " for grid_size ", grid_size);
}

inline void check_masked_rel_pos_bias(const at::Tensor& table, int64_t grid_size, const at::Tensor& ids) {
  MDT_CHECK_DIM(table, 2);
  MDT_CHECK_FLOAT(table);
  MDT_CHECK_SAME_DEVICE(table, ids);
  check_rel_pos_common(ids, grid_size, table.size(0));
}

inline void check_masked_rel_pos_bias_backward(const at::Tensor& grad, const at::Tensor& ids, int64_t grid_size,
                                               int64_t num_rel) {
  MDT_CHECK_DIM(grad, 4);
  MDT_CHECK_FLOAT(grad);
  MDT_CHECK_SAME_DEVICE(grad, ids);
  check_rel_pos_common(ids, grid_size, num_rel);
  TORCH_CHECK_VALUE(grad.size(3) == grad.size(2) && ids.size(0) == grad.size(0) && ids.size(1) == grad.size(2),
                    "grad shape ", grad.sizes(), " does not match ids_keep ", ids.sizes());
}

}  // namespace mdt
