"""linear(x, weight, bias=None) = x W^T + b: nn.Linear, with the CPU GEMM on mdt_kernels' engine.

Every per-token projection of an MDT block (qkv, attention output, MLP fc2, the long-skip and final
linears) is a GEMM, and on the CPU the GEMMs are most of a training step (over three quarters of an
MDTv2-S/2 step, benchmarks/results). F.linear runs them as MKL's sgemm, which on AMD CPUs runs its
generic `def` kernels. The C++ kernel (csrc/cpu/linear.cpp) runs x W^T + b and the backward's dx = g W
on the CPU GEMM engine of csrc/cpu/gemm.h (mdt_kernels' own GEMM, oneDNN or ATen, chosen per dtype and
CPU by its table; bias in the epilogue), and dW = g^T x as at::mm; ``cpu_gemm_engine(dtype)`` says which
engine runs. ``use_cpu_gemm_engine("aten")`` (or MDT_KERNELS_CPU_GEMM=aten) runs ATen's GEMMs for every
dtype, for comparison; float16/float64 always do.

There is deliberately no CUDA or Triton kernel: on GPUs the GEMM is cuBLAS's, which F.linear already
calls. Wherever linear has no kernel of the backend in force (CUDA tensors, the triton backend), it runs
its reference F.linear, with no warning: mdt.models.Linear calls it everywhere.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from .._registry import Example, Op, Sizes, declare
from ._register import register_op


def linear_ref(x, weight, bias=None):
    """Plain PyTorch: F.linear."""
    return F.linear(x, weight, bias)


# ---------------------------------------------------------------------------------------------------
# Checks (shared with linear_gelu) and registration: fake kernels and autograd of the C++ op


def check(x, weight, bias, grad=None, *, cast: bool = False) -> None:
    """x (..., Din), weight (Dout, Din), bias (Dout,) or None and grad (..., Dout) when given: float tensors
    of one device and, unless cast (the public function under autocast, which casts them to one dtype
    next), of one dtype. The public functions' arguments and the fake kernels' (also linear_gelu's)."""
    _checks.check_tensor("weight", weight, 2, "(Dout, Din)")
    if bias is not None:
        _checks.check_tensor("bias", bias, 1, "(Dout,)")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (..., Din), got shape {tuple(x.shape)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None:
            _checks.check_float(name, t)
    _checks.require(weight.shape[1] == x.shape[-1], lambda: f"weight has shape {tuple(weight.shape)} but x has "
                                                               f"{x.shape[-1]} input features")
    if bias is not None:
        _checks.require(bias.shape[0] == weight.shape[0], lambda: f"bias has {bias.shape[0]} elements but weight "
                                                                     f"has {weight.shape[0]} output features")
    if grad is not None:
        _checks.check_shape("grad", grad, (*x.shape[:-1], weight.shape[0]), "(..., Dout)")
    _checks.check_same("device", x=x, weight=weight, bias=bias, grad=grad)
    if not cast:
        _checks.check_same("dtype", x=x, weight=weight, bias=bias, grad=grad)


def autocasting(x) -> bool:
    """Whether autocast is on for x's device (then the public functions cast as it would, see autocast_inputs)."""
    return isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)


def autocast_inputs(x, weight, bias):
    """Custom ops see no autocast: casts as autocast would for F.linear (which leaves float64 alone)."""
    if not autocasting(x):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(x.device.type)
    x, weight, bias = (t if t is None or t.dtype == torch.float64 else t.to(dtype) for t in (x, weight, bias))
    _checks.check_same("dtype", x=x, weight=weight, bias=bias)
    return x, weight, bias


def _fake_forward(x, weight, bias):
    check(x, weight, bias)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _fake_backward(grad, x, weight, has_bias):
    check(x, weight, None, grad)
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


def _compiled(ops, x, weight, bias):
    return ops.linear(x, weight, bias)


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
    check(x, weight, bias, cast=autocasting(x))
    backend, run = _dispatch.implementation("linear", x.device, x, weight, bias)
    if backend == "reference":  # F.linear autocasts itself
        return linear_ref(x, weight, bias)
    return run(*autocast_inputs(x, weight, bias))


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    """(B, N, D) -> (B, N, F) with and without a bias."""
    x, w, b = (torch.randn(*shape).to(dtype) for shape in ((s.B, s.N, s.D), (s.hidden, s.D), (s.hidden,)))
    return [Example((x, w, b), grad=(0, 1, 2)), Example((x.clone(), w.clone()), grad=(0, 1))]


# No GPU kernel: cuBLAS, which F.linear calls, is the GEMM there.
declare(Op("linear", linear, compiled=_compiled, examples=_examples, reference_elsewhere=True,
           impls={"reference": linear_ref, "cpu": functools.partial(_compiled, torch.ops.mdt_kernels)}))
