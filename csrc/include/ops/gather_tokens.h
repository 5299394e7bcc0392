// Shape/dtype/device checks of gather_tokens, shared by the CPU and CUDA bindings.
#pragma once
#include "mdt_checks.h"

namespace mdt {

inline void check_gather_tokens(const at::Tensor& x, const at::Tensor& ids) {
  MDT_CHECK_DIM(x, 3);
  MDT_CHECK_DIM(ids, 2);
  MDT_CHECK_FLOAT(x);
  MDT_CHECK_IDS(ids);
  MDT_CHECK_SAME_DEVICE(x, ids);
  TORCH_CHECK_VALUE(ids.size(0) == x.size(0), "ids has batch size ", ids.size(0), " but x has ", x.size(0));
}

inline void check_gather_tokens_backward(const at::Tensor& grad, const at::Tensor& ids) {
  MDT_CHECK_DIM(grad, 3);
  MDT_CHECK_DIM(ids, 2);
  MDT_CHECK_FLOAT(grad);
  MDT_CHECK_IDS(ids);
  MDT_CHECK_SAME_DEVICE(grad, ids);
  TORCH_CHECK_VALUE(ids.size(0) == grad.size(0) && ids.size(1) == grad.size(1), "ids shape ", ids.sizes(),
                    " does not match grad ", grad.sizes());
}

}  // namespace mdt
