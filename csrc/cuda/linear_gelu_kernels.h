// linear_gelu on CUDA (kernels in linear_gelu_kernels.cu, torch binding in linear_gelu.cpp): the
// elementwise parts around the GEMMs, which the binding runs with ATen. h, y, grad, dh contiguous (M, D)
// (h = x W^T without the bias, D = Dout); bias and dbias contiguous (D,); the workspace in the
// accumulation type A.
#pragma once
#include "common.cuh"

namespace mdt {

// y = GELU_tanh(h + bias[None, :]).
template <typename T>
struct LinearGeluArgs {
  const T* h = nullptr;
  const T* bias = nullptr;
  T* y = nullptr;
  int64_t M = 0, D = 0;
};

// dh = grad * GELU_tanh'(h + bias[None, :]), dbias = sum over rows of dh (fixed summation order).
template <typename T, typename A = typename Acc<T>::type>
struct LinearGeluBwdArgs {
  const T* grad = nullptr;
  const T* h = nullptr;
  const T* bias = nullptr;
  T* dh = nullptr;
  T* dbias = nullptr;
  A* workspace = nullptr;  // linear_gelu_bwd_workspace(M, D) elements
  int64_t M = 0, D = 0;
};

template <typename T>
cudaError_t launch_linear_gelu_fwd(const LinearGeluArgs<T>& args, cudaStream_t stream);

// Elements of the workspace launch_linear_gelu_bwd needs.
int64_t linear_gelu_bwd_workspace(int64_t M, int64_t D);

template <typename T>
cudaError_t launch_linear_gelu_bwd(const LinearGeluBwdArgs<T>& args, cudaStream_t stream);

}  // namespace mdt
