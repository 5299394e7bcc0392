"""linear(x, weight, bias=None) = x W^T + b: nn.Linear, with the CPU GEMM on mdt_kernels' engine.

Every per-token projection of an MDT block (qkv, attention output, MLP fc2, the long-skip and final
linears) is a GEMM, and on the CPU the GEMMs are most of a training step (over three quarters of an
MDTv2-S/2 step, benchmarks/results). F.linear runs them as MKL's sgemm, which on AMD CPUs runs its
generic `def` kernels rather than AVX-512 ones; the C++ kernel (csrc/cpu/linear.cpp) runs x W^T + b
and the backward's dx = g W as oneDNN's inner product (the engine of csrc/cpu/gemm.h, bias in its
epilogue), which uses AVX-512 on any vendor, and dW = g^T x as at::mm. The engine is chosen per
dtype, oneDNN only where this CPU runs the dtype on it and it measured faster (fp32 with AVX-512; bf16
where oneDNN has it, which needs AVX-512); ``cpu_gemm_engine(dtype)`` says which runs.
``use_cpu_gemm_engine("aten")`` (or MDT_KERNELS_CPU_GEMM=aten) runs ATen's GEMMs for every dtype, for
comparison; float16/float64 always do.

There is deliberately no CUDA or Triton kernel: on GPUs the GEMM is cuBLAS's, which F.linear already
calls, so the model uses this op only on CPU tensors (mdt.models.Linear). Called on CUDA tensors under
``auto`` it runs the reference F.linear (with the usual one-time warning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from ._register import expect, expect_float, register_op

_dispatch.declare_kernels("linear", cpu=("cpu",), cuda=())  # no GPU kernel: cuBLAS is the reference


def linear_ref(x, weight, bias=None):
    """Plain PyTorch: F.linear."""
    return F.linear(x, weight, bias)


# ---------------------------------------------------------------------------------------------------
# Registration: fake kernels and autograd of the C++ op


def expect_linear(x, weight, bias, grad=None) -> None:
    """In a fake kernel (also linear_gelu's): what the C++ op checks of x (..., Din), weight (Dout, Din),
    bias (Dout,) or None, and grad (..., Dout), all of x's float dtype."""
    torch._check_value(x.dim() >= 1, lambda: f"x must have at least 1 dimension (..., Din), got shape {tuple(x.shape)}")
    expect_float("x", x)
    expect("weight", weight, (None, x.shape[-1]), "(Dout, Din)", x.dtype)
    if bias is not None:
        expect("bias", bias, (weight.shape[0],), "(Dout,)", x.dtype)
    if grad is not None:
        expect("grad", grad, (*x.shape[:-1], weight.shape[0]), "(..., Dout)", x.dtype)


def _fake_forward(x, weight, bias):
    expect_linear(x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _fake_backward(grad, x, weight, has_bias):
    expect_linear(x, weight, None, grad)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty((weight.shape[0] if has_bias else 0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _backward(backward_op, ctx, grad):
    x, weight = ctx.saved_tensors
    dx, dw, db = backward_op(grad, x, weight, ctx.has_bias)
    return dx, dw, (db if ctx.has_bias else None)


register_op("linear", fake_forward=_fake_forward, fake_backward=_fake_backward, setup_context=_setup_context,
            backward=_backward, triton=False)


def _compiled(x, weight, bias):
    return torch.ops.mdt_kernels.linear(x, weight, bias)


IMPLS = {"reference": linear_ref, "cpu": _compiled}

# ---------------------------------------------------------------------------------------------------
# Input checks and autocast, shared with linear_gelu


def check_inputs(op: str, x, weight, bias) -> str:
    """Checks F.linear's arguments (bias may be None); returns the backend that will run ``op``."""
    _checks.check_tensor("weight", weight, 2, "(Dout, Din)")
    if bias is not None:
        _checks.check_tensor("bias", bias, 1, "(Dout,)")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (..., Din), got a 0-D tensor")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None:
            _checks.check_float(name, t)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)} but x has {x.shape[-1]} input features")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} elements but weight has {weight.shape[0]} output features")
    _checks.check_same("device", x=x, weight=weight, bias=bias)
    if not torch.is_autocast_enabled(x.device.type):  # before dispatch, so that the reference raises the same
        _checks.check_same("dtype", x=x, weight=weight, bias=bias)
    return _dispatch.resolve(op, x.device)


def autocast_inputs(x, weight, bias):
    """Custom ops see no autocast: casts as autocast would for F.linear (which leaves float64 alone)."""
    if not torch.is_autocast_enabled(x.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)
    x, weight, bias = (t if t is None or t.dtype == torch.float64 else t.to(dtype) for t in (x, weight, bias))
    _checks.check_same("dtype", x=x, weight=weight, bias=bias)
    return x, weight, bias


# ---------------------------------------------------------------------------------------------------
# Public function


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, its CPU GEMMs on the engine of ``cpu_gemm_engine(x.dtype)``.

    Args:
        x: (..., Din) float32/float16/bfloat16/float64.
        weight: (Dout, Din) and bias: (Dout,) or None, x's dtype (under autocast the three are cast to
            the autocast dtype, float64 ones excepted, as F.linear's are) and device.
    Returns:
        (..., Dout) in x's dtype. Differentiable in x, weight and bias.
    """
    backend = check_inputs("linear", x, weight, bias)
    if backend == "reference":
        return linear_ref(x, weight, bias)
    x, weight, bias = autocast_inputs(x, weight, bias)
    return IMPLS[backend](x, weight, bias)
