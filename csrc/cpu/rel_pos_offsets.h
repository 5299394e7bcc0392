// Table offsets of MDT's relative-position bias, shared by the CPU kernels that read it
// (masked_rel_pos_bias, rel_pos_attention). For p = (r_p, c_p) on a G x G grid and W = 2G-1:
//   idx(p,q) = (r_p - r_q + G-1) * W + (c_p - c_q + G-1) = A(p) - L(q),
//   A(p) = (r_p + G-1) * W + c_p + G-1,   L(q) = r_q * W + c_q,
// so a row i of sample b reads table[A(ids[b,i]) - L(ids[b,j]), h] for j = 0..K-1.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mdt {

struct RelPosOffsets {
  std::vector<int32_t> A, L;  // row and column offsets of every token of ids, int32 (B*K each)
};

// ids: contiguous int64 grid positions, range-checked by the caller.
inline RelPosOffsets rel_pos_offsets(const at::Tensor& ids, int64_t G) {
  RelPosOffsets o;
  const int64_t n = ids.numel(), W = 2 * G - 1;
  const int64_t* id = ids.const_data_ptr<int64_t>();
  o.A.resize(n);
  o.L.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = id[i] / G, c = id[i] % G;
    o.A[i] = static_cast<int32_t>((r + G - 1) * W + c + G - 1);
    o.L[i] = static_cast<int32_t>(r * W + c);
  }
  return o;
}

}  // namespace mdt
