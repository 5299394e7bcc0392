// Fused multi-tensor Adan step on CUDA: every block updates one chunk (kChunk elements) of one tensor.
// The tensors' pointers and sizes and the block -> (tensor, chunk) map travel by value in the kernel
// arguments (under the classic 4 KB limit), so a launch needs no host-to-device copy and no device
// table, and is capturable in a CUDA graph. Many parameters share one launch; a large model takes a
// few launches (kMaxTensors tensors / kMaxBlocks chunks each).
//
// Per element (math in fp32, fp64 for fp64 tensors), one read of p, g, m, n, v, neg_pre_grad and one
// write of p, m, n, v, neg_pre_grad: 44 bytes per fp32 parameter. See mdt_kernels/ops/adan.py.
#include <type_traits>

#include "adan_kernels.h"

namespace mdt {
namespace {

constexpr int kAdanThreads = 512;
constexpr int kVec = 4;            // elements per thread per iteration on the aligned path
constexpr int64_t kChunk = 65536;  // elements per block
constexpr int kMaxTensors = 36;
constexpr int kMaxBlocks = 320;

struct AdanTable {
  void* ptr[6][kMaxTensors];  // p, g, m, n, v, neg_pre_grad
  int64_t numel[kMaxTensors];
  int32_t chunk[kMaxBlocks];   // chunk index within its tensor, per block
  uint8_t tensor[kMaxBlocks];  // slot in ptr/numel, per block
};
static_assert(sizeof(AdanTable) + sizeof(AdanHyper) + sizeof(float*) <= 4096, "kernel arguments exceed 4 KB");

template <typename M>
struct Consts {
  M clip, b1, b2, b3, omb1, omb2, omb3, step_size, step_size_diff, bc3_sqrt, eps, decay;
};

template <bool kFirst, bool kNoProx, typename M>
__device__ __forceinline__ void adan_element(M& p, M g, M& m, M& n, M& v, M& q, const Consts<M>& c) {
  g *= c.clip;
  const M d = kFirst ? M(0) : g + q;
  m = c.b1 * m + c.omb1 * g;
  v = c.b2 * v + c.omb2 * d;
  const M u = g + c.b2 * d;
  n = c.b3 * n + c.omb3 * u * u;
  const M denom = sqrt(n) / c.bc3_sqrt + c.eps;
  const M update = (c.step_size * m + c.step_size_diff * v) / denom;
  p = kNoProx ? p * c.decay - update : (p - update) / c.decay;
  q = -g;
}

template <typename T>
struct alignas(sizeof(T) * kVec) Pack {
  T x[kVec];
};

template <typename T>
__device__ __forceinline__ bool aligned(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % (sizeof(T) * kVec) == 0;
}

template <typename P, typename S, bool kFirst, bool kNoProx>
__global__ void __launch_bounds__(kAdanThreads)
    adan_step_kernel(const AdanTable table, const AdanHyper h, const float* __restrict__ clip_coef) {
  using M = std::conditional_t<std::is_same_v<P, double> || std::is_same_v<S, double>, double, float>;
  const float clip = *clip_coef;
  if (!isfinite(clip)) return;  // the caller's skip signal
  const Consts<M> c{M(clip),          M(h.beta1),     M(h.beta2),          M(h.beta3),
                    M(1.0 - h.beta1), M(1.0 - h.beta2), M(1.0 - h.beta3),    M(h.step_size),
                    M(h.step_size_diff), M(h.bias_correction3_sqrt), M(h.eps), M(h.decay)};
  const int t = table.tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(table.chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(table.numel[t], begin + kChunk);
  P* __restrict__ p = static_cast<P*>(table.ptr[0][t]);
  const P* __restrict__ g = static_cast<const P*>(table.ptr[1][t]);
  S* __restrict__ m = static_cast<S*>(table.ptr[2][t]);
  S* __restrict__ n = static_cast<S*>(table.ptr[3][t]);
  S* __restrict__ v = static_cast<S*>(table.ptr[4][t]);
  S* __restrict__ q = static_cast<S*>(table.ptr[5][t]);

  int64_t tail = begin;  // first element left to the scalar loop
  if (aligned<P>(p) && aligned<P>(g) && aligned<S>(m) && aligned<S>(n) && aligned<S>(v) && aligned<S>(q)) {
    // begin is a multiple of kChunk, so every pack below is aligned as well.
    const int64_t vec_end = begin + (end - begin) / kVec * kVec;
    for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < vec_end; i += kAdanThreads * kVec) {
      Pack<P> pp = *reinterpret_cast<const Pack<P>*>(p + i);
      const Pack<P> gp = *reinterpret_cast<const Pack<P>*>(g + i);
      Pack<S> mp = *reinterpret_cast<const Pack<S>*>(m + i);
      Pack<S> np = *reinterpret_cast<const Pack<S>*>(n + i);
      Pack<S> vp = *reinterpret_cast<const Pack<S>*>(v + i);
      Pack<S> qp;
      if (!kFirst) qp = *reinterpret_cast<const Pack<S>*>(q + i);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        M pk = to_acc(pp.x[k]), mk = to_acc(mp.x[k]), nk = to_acc(np.x[k]), vk = to_acc(vp.x[k]);
        M qk = kFirst ? M(0) : M(to_acc(qp.x[k]));
        adan_element<kFirst, kNoProx>(pk, M(to_acc(gp.x[k])), mk, nk, vk, qk, c);
        pp.x[k] = from_acc<P>(pk);
        mp.x[k] = from_acc<S>(mk);
        np.x[k] = from_acc<S>(nk);
        vp.x[k] = from_acc<S>(vk);
        qp.x[k] = from_acc<S>(qk);
      }
      *reinterpret_cast<Pack<P>*>(p + i) = pp;
      *reinterpret_cast<Pack<S>*>(m + i) = mp;
      *reinterpret_cast<Pack<S>*>(n + i) = np;
      *reinterpret_cast<Pack<S>*>(v + i) = vp;
      *reinterpret_cast<Pack<S>*>(q + i) = qp;
    }
    tail = vec_end;
  }
  for (int64_t i = tail + threadIdx.x; i < end; i += kAdanThreads) {
    M pk = to_acc(p[i]), mk = to_acc(m[i]), nk = to_acc(n[i]), vk = to_acc(v[i]);
    M qk = kFirst ? M(0) : M(to_acc(q[i]));
    adan_element<kFirst, kNoProx>(pk, M(to_acc(g[i])), mk, nk, vk, qk, c);
    p[i] = from_acc<P>(pk);
    m[i] = from_acc<S>(mk);
    n[i] = from_acc<S>(nk);
    v[i] = from_acc<S>(vk);
    q[i] = from_acc<S>(qk);
  }
}

template <typename P, typename S>
cudaError_t launch_table(const AdanTable& table, int blocks, const AdanHyper& h, const float* clip_coef,
                         cudaStream_t stream) {
  if (h.first) {
    if (h.no_prox) MDT_LAUNCH(blocks, kAdanThreads, 0, stream, adan_step_kernel<P, S, true, true>)(table, h, clip_coef);
    else MDT_LAUNCH(blocks, kAdanThreads, 0, stream, adan_step_kernel<P, S, true, false>)(table, h, clip_coef);
  } else {
    if (h.no_prox) MDT_LAUNCH(blocks, kAdanThreads, 0, stream, adan_step_kernel<P, S, false, true>)(table, h, clip_coef);
    else MDT_LAUNCH(blocks, kAdanThreads, 0, stream, adan_step_kernel<P, S, false, false>)(table, h, clip_coef);
  }
  return cudaGetLastError();
}

}  // namespace

// Fills tables tensor by tensor, chunk by chunk, launching whenever one runs out of block or tensor
// slots. A tensor whose chunks span two launches moves to slot 0 of the next table.
template <typename P, typename S>
cudaError_t launch_adan_step(const AdanStepArgs<P, S>& a, cudaStream_t stream) {
  const AdanHyper& h = a.hyper;
  AdanTable table;
  int slots = 0, blocks = 0;
  for (int64_t i = 0; i < a.num_tensors; ++i) {
    const AdanTensor<P, S>& t = a.tensors[i];
    if (t.numel == 0) continue;
    int slot = slots++;
    void* const ptrs[6] = {t.param, const_cast<P*>(t.grad), t.exp_avg, t.exp_avg_sq, t.exp_avg_diff, t.neg_pre_grad};
    for (int r = 0; r < 6; ++r) table.ptr[r][slot] = ptrs[r];
    table.numel[slot] = t.numel;
    const int64_t chunks = cdiv(t.numel, kChunk);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      table.tensor[blocks] = static_cast<uint8_t>(slot);
      table.chunk[blocks] = static_cast<int32_t>(ch);
      ++blocks;
      const bool last = ch == chunks - 1;
      if (blocks == kMaxBlocks || (last && slots == kMaxTensors)) {
        const cudaError_t err = launch_table<P, S>(table, blocks, h, a.clip_coef, stream);
        if (err != cudaSuccess) return err;
        blocks = 0;
        if (last) {
          slots = 0;
        } else {
          for (int r = 0; r < 6; ++r) table.ptr[r][0] = table.ptr[r][slot];
          table.numel[0] = table.numel[slot];
          slot = 0;
          slots = 1;
        }
      }
    }
  }
  return blocks > 0 ? launch_table<P, S>(table, blocks, h, a.clip_coef, stream) : cudaSuccess;
}

// Parameters of any floating type, states float32 or the parameters' type.
#define MDT_INSTANTIATE_ADAN(P)                                                                       \
  template cudaError_t launch_adan_step<P, float>(const AdanStepArgs<P, float>&, cudaStream_t);    \
  template cudaError_t launch_adan_step<P, P>(const AdanStepArgs<P, P>&, cudaStream_t);
MDT_INSTANTIATE_ADAN(double)
MDT_INSTANTIATE_ADAN(__half)
MDT_INSTANTIATE_ADAN(__nv_bfloat16)
template cudaError_t launch_adan_step<float, float>(const AdanStepArgs<float, float>&, cudaStream_t);

}  // namespace mdt
