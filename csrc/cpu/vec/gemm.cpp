// mdt_kernels' own fp32 GEMM (vec/gemm.h): y = x w^T (+ bias).
//
// The loops are BLIS's (Van Zee and van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
// Functionality", 2015), sized for MDT's projections (M = batch x tokens in the thousands, N and K of
// 384..4608):
//   for each slice of K (kKC at most):            pack w's slice into panels of kNR columns (kc x kNR)
//     in parallel, for each tile of kMC rows x kNC columns of y:
//       pack x's (kMC x kc) block into panels of kMR rows (kc x kMR), once per row block per thread
//       for each kNR-column panel:                 (stays in L1 over the next loop)
//         for each kMR-row panel:                  (the packed x block stays in L2)
//           the micro-kernel: a kMR x kNR tile of y in registers, kc rank-1 updates (vector FMAs)
// The micro-kernel holds kMR x 2 at::vec vectors of accumulators (AVX2: 12 ymm, 6 x 16 floats), one
// broadcast and two vector loads per row per step. Edge tiles are computed whole on zero-padded panels
// and stored partially. The first K slice writes y, later slices add to it, the last one adds the bias
// (and applies GELU, with gelu, to each block of y the task has just finished, still in L2). Each element
// of y is a sum over k in increasing order of slices, so results do not depend on the thread count.
#include "gemm.h"

#include "fast_math.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace mdt::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kMR = kGemmMR;
constexpr int64_t kNR = 2 * Vec::size();
constexpr int64_t kKC = 384;  // a kc x kNR panel of w: 24 KB at AVX2, within a 32 KB L1
constexpr int64_t kMC = 96;   // a kMC x kc block of x: 144 KB, within L2
constexpr int64_t kNC = 256;  // columns of y per parallel task

// The kMR x kNR tile y (row stride ldy) = the product of the packed panels xp (kc x kMR) and wp
// (kc x kNR), plus y's own values with kAccumulate (a later slice of K), plus bias[0:kNR] when not null
// (the last slice): ((product + y) + bias), the order in which a separate bias pass would round.
template <bool kAccumulate>
inline void micro_kernel(const float* __restrict__ xp, const float* __restrict__ wp, int64_t kc,
                         float* __restrict__ y, int64_t ldy, const float* bias) {
  // y's lines arrive (for writing) while the products are summed: a tile of a large y is a cache miss.
  for (int i = 0; i < kMR; ++i) {
    __builtin_prefetch(y + i * ldy, 1, 3);
    __builtin_prefetch(y + i * ldy + kNR - 1, 1, 3);
  }
  Vec acc[kMR][2];
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = Vec(0.f);
  for (int64_t k = 0; k < kc; ++k, xp += kMR, wp += kNR) {
    const Vec w0 = Vec::loadu(wp), w1 = Vec::loadu(wp + Vec::size());
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const Vec xi(xp[i]);
      acc[i][0] = at::vec::fmadd(xi, w0, acc[i][0]);
      acc[i][1] = at::vec::fmadd(xi, w1, acc[i][1]);
    }
  }
  const Vec b0 = bias != nullptr ? Vec::loadu(bias) : Vec(0.f);
  const Vec b1 = bias != nullptr ? Vec::loadu(bias + Vec::size()) : Vec(0.f);
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    float* yi = y + i * ldy;
    if (kAccumulate) acc[i][0] = acc[i][0] + Vec::loadu(yi), acc[i][1] = acc[i][1] + Vec::loadu(yi + Vec::size());
    (acc[i][0] + b0).store(yi);
    (acc[i][1] + b1).store(yi + Vec::size());
  }
}

// micro_kernel on y[0:mr, 0:nr] of an edge tile (mr <= kMR, nr <= kNR), through a full tile in memory.
template <bool kAccumulate>
void edge_kernel(const float* xp, const float* wp, int64_t kc, float* y, int64_t ldy, int64_t mr, int64_t nr,
                 const float* bias) {
  float tile[kMR * kNR] = {};
  float b[kNR] = {};
  for (int64_t i = 0; i < mr && kAccumulate; ++i) std::copy(y + i * ldy, y + i * ldy + nr, tile + i * kNR);
  if (bias != nullptr) std::copy(bias, bias + nr, b);
  micro_kernel<kAccumulate>(xp, wp, kc, tile, kNR, bias != nullptr ? b : nullptr);
  for (int64_t i = 0; i < mr; ++i) std::copy(tile + i * kNR, tile + i * kNR + nr, y + i * ldy);
}

// Panels of kNR columns of w^T over k0 .. k0 + kc: dst[p][k][j] = w[p kNR + j, k0 + k], zero past N.
void pack_w(const float* w, int64_t sn, int64_t sk, int64_t N, int64_t k0, int64_t kc, float* dst) {
  const int64_t panels = (N + kNR - 1) / kNR;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* d = dst + p * kc * kNR;
      const int64_t n0 = p * kNR, nr = std::min(kNR, N - n0);
      const float* src = w + n0 * sn + k0 * sk;
      for (int64_t k = 0; k < kc; ++k, d += kNR) {
        for (int64_t j = 0; j < nr; ++j) d[j] = src[j * sn + k * sk];
        for (int64_t j = nr; j < kNR; ++j) d[j] = 0.f;
      }
    }
  });
}

// Panels of kMR rows of x's block (rows m0 .. m0 + mc, columns k0 .. k0 + kc): dst[q][k][i], zero past mc.
void pack_x(const float* x, int64_t ldx, int64_t m0, int64_t mc, int64_t k0, int64_t kc, float* dst) {
  for (int64_t r0 = 0; r0 < mc; r0 += kMR, dst += kc * kMR) {
    const int64_t mr = std::min(kMR, mc - r0);
    const float* src = x + (m0 + r0) * ldx + k0;
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * kMR;
      for (int64_t i = 0; i < mr; ++i) d[i] = src[i * ldx + k];
      for (int64_t i = mr; i < kMR; ++i) d[i] = 0.f;
    }
  }
}

// y[r, 0:n] = GELU_tanh(y[r, 0:n]) for rows, a block of y that the task has just written (in L2).
void gelu_rows(float* y, int64_t ldy, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r, y += ldy) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = fast::gelu_tanh(y[j]);
  }
}

void gemm(const View& x, const View& w, const View& bias, const View& y, bool gelu) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const float* xd = x.const_data_ptr<float>();
  const float* wd = w.const_data_ptr<float>();
  const float* bd = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  const int64_t ldx = x.stride(0), ldy = y.stride(0), sn = w.stride(0), sk = w.stride(1);
  // K in equal slices of at most kKC (a multiple of 8 but the last), so no slice is a short remainder.
  const int64_t slices = (K + kKC - 1) / kKC;
  const int64_t kc_max = std::min(K, ((K + slices - 1) / slices + 7) / 8 * 8);
  const int64_t panels = (N + kNR - 1) / kNR;
  std::vector<float> wpack(panels * kNR * kc_max);
  const int64_t row_blocks = (M + kMC - 1) / kMC, col_tiles = (N + kNC - 1) / kNC;
  for (int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const int64_t kc = std::min(kc_max, K - k0);
    const bool last = k0 + kc == K;
    const bool gelu_now = gelu && last;  // y is complete, block by block
    pack_w(wd, sn, sk, N, k0, kc, wpack.data());
    // Tasks row block major: a thread's contiguous run of tasks packs each row block of x once.
    at::parallel_for(0, row_blocks * col_tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xpack(kMC * kc);
      int64_t packed = -1;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t rb = task / col_tiles, m0 = rb * kMC, mc = std::min(kMC, M - m0);
        if (rb != packed) pack_x(xd, ldx, m0, mc, k0, kc, xpack.data()), packed = rb;
        const int64_t p_begin = task % col_tiles * (kNC / kNR), p_end = std::min(panels, p_begin + kNC / kNR);
        for (int64_t p = p_begin; p < p_end; ++p) {
          const int64_t n0 = p * kNR, nr = std::min(kNR, N - n0);
          const float* wp = wpack.data() + p * kc * kNR;
          for (int64_t r0 = 0; r0 < mc; r0 += kMR) {
            float* yt = yd + (m0 + r0) * ldy + n0;
            const float* xp = xpack.data() + r0 * kc;
            const int64_t mr = std::min(kMR, mc - r0);
            const float* b = bd != nullptr && last ? bd + n0 : nullptr;
            if (mr == kMR && nr == kNR) {
              k0 == 0 ? micro_kernel<false>(xp, wp, kc, yt, ldy, b) : micro_kernel<true>(xp, wp, kc, yt, ldy, b);
            } else {
              k0 == 0 ? edge_kernel<false>(xp, wp, kc, yt, ldy, mr, nr, b)
                      : edge_kernel<true>(xp, wp, kc, yt, ldy, mr, nr, b);
            }
          }
        }
        if (gelu_now) {
          const int64_t n_begin = p_begin * kNR, n_end = std::min(N, p_end * kNR);
          gelu_rows(yd + m0 * ldy + n_begin, ldy, mc, n_end - n_begin);
        }
      }
    });
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY

MDT_DEFINE_KERNEL(GemmF32Fn, gemm_f32, &gemm)

}  // namespace mdt::cpu
