// Shape/dtype/device checks of unmask_tokens, shared by the CPU and CUDA bindings.
#pragma once
#include "mdt_checks.h"

namespace mdt {

inline void check_unmask_tokens(const at::Tensor& xk, const at::Tensor& ids, const at::Tensor& mask, int64_t N,
                                const std::optional<at::Tensor>& pos) {
  MDT_CHECK_DIM(xk, 3);
  MDT_CHECK_DIM(ids, 2);
  MDT_CHECK_FLOAT(xk);
  MDT_CHECK_IDS(ids);
  MDT_CHECK_SAME_DEVICE(xk, ids);
  MDT_CHECK_SAME_DEVICE(xk, mask);
  MDT_CHECK_SAME_DTYPE(xk, mask);
  const int64_t B = xk.size(0), K = xk.size(1), D = xk.size(2);
  TORCH_CHECK_VALUE(ids.size(0) == B && ids.size(1) == K, "ids_keep shape ", ids.sizes(), " does not match x_kept ",
                    xk.sizes());
  TORCH_CHECK_VALUE(K <= N, "x_kept holds ", K, " tokens, more than num_tokens=", N);
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.size(0) == D, "mask_token must have shape (", D, "), got ", mask.sizes());
  if (pos.has_value() && pos->defined()) {
    MDT_CHECK_SAME_DEVICE(xk, (*pos));
    MDT_CHECK_SAME_DTYPE(xk, (*pos));
    TORCH_CHECK_VALUE(pos->dim() == 2 && pos->size(0) == N && pos->size(1) == D, "pos_embed must have shape (", N,
                      ", ", D, "), got ", pos->sizes());
  }
}

inline void check_unmask_tokens_backward(const at::Tensor& grad, const at::Tensor& ids) {
  MDT_CHECK_DIM(grad, 3);
  MDT_CHECK_DIM(ids, 2);
  MDT_CHECK_FLOAT(grad);
  MDT_CHECK_IDS(ids);
  MDT_CHECK_SAME_DEVICE(grad, ids);
  TORCH_CHECK_VALUE(ids.size(0) == grad.size(0) && ids.size(1) <= grad.size(1), "ids_keep shape ", ids.sizes(),
                    " does not match grad ", grad.sizes());
}

}  // namespace mdt
