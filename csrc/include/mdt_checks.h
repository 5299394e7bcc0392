// Input checks shared by the CPU and CUDA bindings: what reading the tensors safely needs (ranks, sizes,
// dtypes, devices, id bounds). The Python check of each op (mdt_kernels/ops/<op>.py) gives the user's errors
// first; these keep a direct torch.ops.mdt_kernels.* call (or a compiled graph) from reading out of bounds.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#define MDT_CHECK_DIM(t, n) \
  TORCH_CHECK_VALUE((t).dim() == (n), #t " must have " #n " dimensions, got shape ", (t).sizes())

#define MDT_CHECK_FLOAT(t)                                                                        \
  TORCH_CHECK_TYPE((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kHalf ||           \
                       (t).scalar_type() == at::kBFloat16 || (t).scalar_type() == at::kDouble,    \
                   #t " must be float32, float16, bfloat16 or float64, got ", (t).scalar_type())

#define MDT_CHECK_IDS(t) \
  TORCH_CHECK_TYPE((t).scalar_type() == at::kLong, #t " must be int64, got ", (t).scalar_type())

#define MDT_CHECK_SAME_DEVICE(a, b)                                                                  \
  TORCH_CHECK_VALUE((a).device() == (b).device(), #a " and " #b " must be on the same device, got ", \
                    (a).device(), " and ", (b).device())

#define MDT_CHECK_SAME_DTYPE(a, b)                                                                 \
  TORCH_CHECK_TYPE((a).scalar_type() == (b).scalar_type(), #a " and " #b " must have the same dtype, got ", \
                   (a).scalar_type(), " and ", (b).scalar_type())

namespace mdt {

// Serial range check of an int64 id tensor (B,K) against [0, upper). B*K is tiny next to the data.
inline void check_ids_range_cpu(const at::Tensor& ids, int64_t upper, const char* name) {
  const int64_t* p = ids.data_ptr<int64_t>();
  const int64_t n = ids.numel();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < upper, name, " holds ", p[i], " at flat position ", i,
                      ", outside [0, ", upper, ")");
  }
}

}  // namespace mdt
