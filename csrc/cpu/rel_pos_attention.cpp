// rel_pos_attention on CPU: out = softmax(q k^T * scale + bias) v for every (sample, head), with MDT's
// relative-position bias read from the (R,H) table for each pair of kept tokens, on the packed qkv
// projection (B,K,3,H,Dh) and writing out as (B,K,H,Dh), so neither side needs a transpose copy.
//
// Eager PyTorch (masked_rel_pos_bias + scaled_dot_product_attention, math path on CPU) materialises the
// (B,H,K,K) bias, scales q and k, runs a batched matmul, adds the bias, runs softmax as its own pass, and
// in backward runs softmax_backward and then sums the (B,H,K,K) score gradient into the table. Here one
// task per (b, h) does, with its K x K block in a per-thread buffer in cache (the row passes:
// vec/rel_pos_attention.cpp, compiled per instruction set):
//   forward:  S = q k^T (BLAS), one pass  P = softmax(S * scale + bias)  that also gives each row's max and
//             reciprocal sum (the stats, saved for backward, (B,H,K,2)), O = P v. The inference form
//             (rel_pos_attention_inference, for sampling under no_grad) skips the stats.
//   backward: S = q k^T again and one pass that recomputes the forward's P from the stats, bit for bit (as
//             flash attention does: recomputing P costs one K x K x Dh product, keeping it would cost a
//             (B,H,K,K) tensor written, read back and faulted into memory on every step), dP = dO v^T,
//             dv = P^T dO, one pass
//             dS = P * (dP - rowsum(P * dP))  that also adds dS into this task's slice of the table
//             gradient, dq = scale * dS k, dk = scale * dS^T q.
// Bias index: idx(p,q) = A(p) - L(q), offsets from rel_pos_offsets.h.
// Table-gradient slices (one per (b,h)) are summed over b in order: deterministic for any thread count.
// fp16/bf16 inputs are computed in fp32 (P, the stats and the accumulators are fp32); fp64 in fp64.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "ops/adaln.h"
#include "ops/rel_pos_attention.h"
#include "rel_pos_offsets.h"
#include "vec/rel_pos_attention.h"

// BLAS (Fortran interface, 32-bit ints) as exported by libtorch_cpu (MKL or OpenBLAS). Weak: a torch
// built without BLAS leaves them null and the op raises instead of failing to load.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace mdt {
namespace {

void check_blas() {
  TORCH_CHECK(sgemm_ != nullptr && dgemm_ != nullptr,
              "rel_pos_attention (cpu backend): this torch build exports no BLAS sgemm_/dgemm_; "
              "use mdt_kernels.use_backend('reference')");
}

int as_int(int64_t v) {
  TORCH_CHECK_VALUE(v <= std::numeric_limits<int>::max(), "rel_pos_attention: dimension ", v, " is too large");
  return static_cast<int>(v);
}

void gemm_cm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
             const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int M = as_int(m), N = as_int(n), Kk = as_int(k), la = as_int(lda), lb = as_int(ldb), lc = as_int(ldc);
  sgemm_(&ta, &tb, &M, &N, &Kk, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

void gemm_cm(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
             const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  const int M = as_int(m), N = as_int(n), Kk = as_int(k), la = as_int(lda), lb = as_int(ldb), lc = as_int(ldc);
  dgemm_(&ta, &tb, &M, &N, &Kk, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

// Row-major C (M x N, row stride ldc) = alpha * op(A) op(B) + beta * C, op(A) M x Kd, op(B) Kd x N; A and B
// are row-major with row strides lda, ldb (transposed when ta / tb). Row-major C is column-major C^T,
// so this is the column-major product C^T = op(B)^T op(A)^T.
template <typename T>
void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t Kd, T alpha, const T* A, int64_t lda, const T* B,
             int64_t ldb, T beta, T* C, int64_t ldc) {
  gemm_cm(tb ? 'T' : 'N', ta ? 'T' : 'N', N, M, Kd, alpha, B, ldb, A, lda, beta, C, ldc);
}


// qkv in the compute dtype with a unit last stride (a copy only for fp16/bf16 or odd strides).
at::Tensor compute_qkv(const at::Tensor& qkv) {
  auto q = qkv.to(adaln::acc_dtype(qkv));
  if (q.stride(4) != 1 || q.stride(3) != q.size(4) || q.stride(2) != q.size(3) * q.size(4)) q = q.contiguous();
  return q;
}

template <typename T>
void forward_kernel(const at::Tensor& qkv, const at::Tensor& tableT, const RelPosOffsets& off, T scale,
                    at::Tensor& out, T* stats /* (B,H,K,2), or null: inference */) {
  const int64_t B = qkv.size(0), K = qkv.size(1), H = qkv.size(3), Dh = qkv.size(4), R = tableT.size(1);
  const int64_t sB = qkv.stride(0), sK = qkv.stride(1), s3 = qkv.stride(2), sH = qkv.stride(3);
  const T* base = qkv.const_data_ptr<T>();
  const T* tab = tableT.const_data_ptr<T>();
  T* o = out.data_ptr<T>();  // (B, K, H, Dh) contiguous
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> P(static_cast<size_t>(K * K));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* q = base + b * sB + h * sH;
      const T* k = q + s3;
      const T* v = q + 2 * s3;
      gemm_rm<T>(false, true, K, K, Dh, T(1), q, sK, k, sK, T(0), P.data(), K);  // S = q k^T
      cpu::rel_pos_softmax<T>()(P.data(), K, tab + h * R, off.A.data() + b * K, off.L.data() + b * K, scale,
                                stats != nullptr ? stats + 2 * bh * K : nullptr);
      gemm_rm<T>(false, false, K, Dh, K, T(1), P.data(), K, v, sK, T(0), o + b * K * H * Dh + h * Dh, H * Dh);
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& tableT, const T* stats,
                     const RelPosOffsets& off, T scale, at::Tensor& dqkv, std::vector<T>& dtab) {
  const int64_t B = qkv.size(0), K = qkv.size(1), H = qkv.size(3), Dh = qkv.size(4), R = tableT.size(1);
  const int64_t sB = qkv.stride(0), sK = qkv.stride(1), s3 = qkv.stride(2), sH = qkv.stride(3);
  const int64_t gK = H * Dh;  // grad and dqkv are contiguous
  const T* base = qkv.const_data_ptr<T>();
  const T* tab = tableT.const_data_ptr<T>();
  const T* g = grad.const_data_ptr<T>();
  T* d = dqkv.data_ptr<T>();  // (B, K, 3, H, Dh) contiguous
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> P(static_cast<size_t>(K * K)), dP(static_cast<size_t>(K * K));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* q = base + b * sB + h * sH;
      const T* k = q + s3;
      const T* v = q + 2 * s3;
      const T* dO = g + b * K * gK + h * Dh;
      T* dq = d + b * K * 3 * gK + h * Dh;
      T* dk = dq + gK;
      T* dv = dq + 2 * gK;
      const int32_t* A = off.A.data() + b * K;
      const int32_t* L = off.L.data() + b * K;
      gemm_rm<T>(false, true, K, K, Dh, T(1), q, sK, k, sK, T(0), P.data(), K);       // S = q k^T
      cpu::rel_pos_probs<T>()(P.data(), K, tab + h * R, A, L, scale, stats + 2 * bh * K);  // P, as forward
      gemm_rm<T>(false, true, K, K, Dh, T(1), dO, gK, v, sK, T(0), dP.data(), K);     // dP = dO v^T
      gemm_rm<T>(true, false, K, Dh, K, T(1), P.data(), K, dO, gK, T(0), dv, 3 * gK);  // dv = P^T dO
      cpu::rel_pos_softmax_bwd<T>()(P.data(), dP.data(), K, dtab.data() + bh * R, A, L);
      gemm_rm<T>(false, false, K, Dh, K, scale, dP.data(), K, k, sK, T(0), dq, 3 * gK);  // dq = scale dS k
      gemm_rm<T>(true, false, K, Dh, K, scale, dP.data(), K, q, sK, T(0), dk, 3 * gK);   // dk = scale dS^T q
    }
  });
}

// -> (out, stats); stats undefined when keep_stats is false (inference).
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& qkv_in, const at::Tensor& table, int64_t grid_size,
                                           const at::Tensor& ids_in, double scale, bool keep_stats) {
  check_rel_pos_attention(qkv_in, table, grid_size, ids_in);
  check_blas();
  const auto ids = ids_in.contiguous();
  check_ids_range_cpu(ids, grid_size * grid_size, "ids_keep");
  const auto qkv = compute_qkv(qkv_in);
  const int64_t B = qkv.size(0), K = qkv.size(1), H = qkv.size(3), Dh = qkv.size(4);
  auto out = at::empty({B, K, H, Dh}, qkv.options());
  auto stats = keep_stats ? at::empty({B, H, K, 2}, qkv.options()) : at::Tensor();
  if (out.numel() > 0) {
    const auto tableT = table.t().to(qkv.scalar_type()).contiguous();  // (H, R)
    const auto off = rel_pos_offsets(ids, grid_size);
    if (qkv.scalar_type() == at::kDouble)
      forward_kernel<double>(qkv, tableT, off, scale, out, keep_stats ? stats.data_ptr<double>() : nullptr);
    else
      forward_kernel<float>(qkv, tableT, off, static_cast<float>(scale), out,
                            keep_stats ? stats.data_ptr<float>() : nullptr);
  }
  return {out.to(qkv_in.scalar_type()), stats};
}

std::tuple<at::Tensor, at::Tensor> rel_pos_attention_cpu(const at::Tensor& qkv, const at::Tensor& table,
                                                         int64_t grid_size, const at::Tensor& ids, double scale) {
  return forward(qkv, table, grid_size, ids, scale, /*keep_stats=*/true);
}

at::Tensor rel_pos_attention_inference_cpu(const at::Tensor& qkv, const at::Tensor& table, int64_t grid_size,
                                           const at::Tensor& ids, double scale) {
  return std::get<0>(forward(qkv, table, grid_size, ids, scale, /*keep_stats=*/false));
}

std::tuple<at::Tensor, at::Tensor> rel_pos_attention_backward_cpu(const at::Tensor& grad_in, const at::Tensor& qkv_in,
                                                                  const at::Tensor& table, const at::Tensor& stats_in,
                                                                  const at::Tensor& ids_in, int64_t grid_size,
                                                                  double scale) {
  check_rel_pos_attention_backward(grad_in, qkv_in, table, stats_in, ids_in, grid_size);
  check_blas();
  const auto ids = ids_in.contiguous();
  check_ids_range_cpu(ids, grid_size * grid_size, "ids_keep");
  const auto qkv = compute_qkv(qkv_in);
  const auto ct = qkv.scalar_type();
  TORCH_CHECK_TYPE(stats_in.scalar_type() == ct, "stats must be ", ct, ", got ", stats_in.scalar_type());
  const auto stats = stats_in.contiguous();
  const auto grad = grad_in.to(ct).contiguous();
  const int64_t B = qkv.size(0), K = qkv.size(1), H = qkv.size(3), R = table.size(0);
  auto dqkv = at::empty(qkv.sizes(), qkv.options());
  auto d_table = at::zeros({R, H}, qkv.options());
  if (dqkv.numel() > 0) {
    const auto tableT = table.t().to(ct).contiguous();  // (H, R)
    const auto off = rel_pos_offsets(ids, grid_size);
    AT_DISPATCH_FLOATING_TYPES(ct, "rel_pos_attention_backward_cpu", [&] {
      std::vector<scalar_t> dtab(static_cast<size_t>(B * H * R), scalar_t(0));  // one slice per (b, h)
      backward_kernel<scalar_t>(grad, qkv, tableT, stats.const_data_ptr<scalar_t>(), off,
                                static_cast<scalar_t>(scale), dqkv, dtab);
      auto dt = d_table.accessor<scalar_t, 2>();
      for (int64_t h = 0; h < H; ++h)
        for (int64_t b = 0; b < B; ++b) {
          const scalar_t* s = dtab.data() + (b * H + h) * R;
          for (int64_t r = 0; r < R; ++r) dt[r][h] += s[r];
        }
    });
  }
  return {dqkv.to(qkv_in.scalar_type()), d_table};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mdt_kernels, m) {
  // Attention with that bias on the packed projection qkv (B,K,3,H,Dh) of the kept tokens:
  // out (B,K,H,Dh) = softmax(q k^T * scale + bias) v per (b,h); also returns each softmax row's max and
  // reciprocal sum, stats (B,H,K,2), fp32 (fp64 for fp64 qkv), from which the backward recomputes P.
  m.def("rel_pos_attention(Tensor qkv, Tensor table, int grid_size, Tensor ids_keep, float scale) -> (Tensor, Tensor)");
  // The same out without stats, for a forward no backward will follow (sampling under no_grad; CPU).
  m.def("rel_pos_attention_inference(Tensor qkv, Tensor table, int grid_size, Tensor ids_keep, float scale) -> Tensor");
  // -> (d_qkv (B,K,3,H,Dh) in qkv's dtype, d_table (R, H) in stats' dtype)
  m.def("rel_pos_attention_backward(Tensor grad_out, Tensor qkv, Tensor table, Tensor stats, Tensor ids_keep, int grid_size, float scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mdt_kernels, CPU, m) {
  m.impl("rel_pos_attention", &rel_pos_attention_cpu);
  m.impl("rel_pos_attention_inference", &rel_pos_attention_inference_cpu);
  m.impl("rel_pos_attention_backward", &rel_pos_attention_backward_cpu);
}

}  // namespace mdt
