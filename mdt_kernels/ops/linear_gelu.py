"""linear_gelu(x, weight, bias) = GELU_tanh(x W^T + b): the first layer and activation of DiT/MDT MLPs.

Eager PyTorch runs addmm (it copies b into every output row, then accumulates the GEMM onto it) and
GELU as a separate pass, and in backward gelu_backward plus another pass summing dh over rows for db.
The kernels keep the GEMMs (on the CPU those of mdt_kernels.linear's engine, csrc/cpu/gemm.h; on CUDA
ATen's) and fuse the rest: h = x W^T; one pass y = GELU(h + b); backward one pass
dh = g * GELU'(h + b) that also sums db, then dx = dh W, dW = dh^T x.
h (without b) is saved for the backward in place of the GELU input PyTorch saves. The CPU kernel
evaluates tanh with a vectorised exp, the CUDA kernel (csrc/cuda/linear_gelu_kernels.cu) runs the two
passes on 16-byte packs; both sum db in a fixed order (deterministic). Under autocast the inputs are
cast as autocast casts F.linear's. On CUDA ``auto`` runs the CUDA kernel when the extension was built
with it, else the Triton one.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from .._registry import Example, Op, Sizes, declare
from .._triton import acc_dtype, block_size, cdiv, jit, tl, tl_acc
from . import linear as linear_ops
from ._register import register_inference, register_op

# ---------------------------------------------------------------------------------------------------
# Reference


def linear_gelu_ref(x, weight, bias):
    """Plain PyTorch, as DiT/MDT's Mlp runs it: nn.Linear, then nn.GELU(approximate="tanh")."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


# ---------------------------------------------------------------------------------------------------
# Triton kernels (elementwise; the GEMMs stay torch.mm). tanh z = 1 - 2 / (e^{2z} + 1), z clamped to
# +-20 where tanh is +-1 in fp32 and fp64 alike, so e^{2z} cannot overflow.


@jit
def _gelu_parts(u, ACC: tl.constexpr):
    z = 0.7978845608028654 * (u + 0.044715 * u * u * u)  # sqrt(2 / pi) (u + 0.044715 u^3)
    z = tl.minimum(tl.maximum(z, -20.0), 20.0).to(ACC)
    t = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
    return t


@jit
def _linear_gelu_fwd_kernel(h_ptr, b_ptr, y_ptr, D, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    u = tl.load(h_ptr + row * D + offs, mask=mask).to(ACC) + tl.load(b_ptr + offs, mask=mask).to(ACC)
    t = _gelu_parts(u, ACC)
    tl.store(y_ptr + row * D + offs, (0.5 * u * (1.0 + t)).to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _linear_gelu_bwd_kernel(g_ptr, h_ptr, b_ptr, dh_ptr, part_ptr, M, D, CHUNK, BLOCK_D: tl.constexpr,
                            ACC: tl.constexpr):
    # One program per (chunk of CHUNK rows, column block): dh for those rows and their db partial.
    c = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_D], ACC)
    for r in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, M)):
        g = tl.load(g_ptr + r * D + offs, mask=mask, other=0.0).to(ACC)
        u = tl.load(h_ptr + r * D + offs, mask=mask, other=0.0).to(ACC) + b
        t = _gelu_parts(u, ACC)
        d = g * (0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * u * u))
        tl.store(dh_ptr + r * D + offs, d.to(dh_ptr.dtype.element_ty), mask=mask)
        acc += d
    tl.store(part_ptr + c * D + offs, acc, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[:-1].numel(), t.shape[-1]).contiguous()


@torch.library.custom_op("mdt_kernels::linear_gelu_triton", mutates_args=())
def linear_gelu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.mm(_rows(x), weight.t())
    y = torch.empty_like(h)
    M, D = h.shape
    if h.numel() > 0:
        BLOCK_D = block_size(D)
        _linear_gelu_fwd_kernel[(M, cdiv(D, BLOCK_D))](h, bias.contiguous(), y, D, BLOCK_D=BLOCK_D,
                                                       ACC=tl_acc(h.dtype))
    return y.view(*x.shape[:-1], D), h


@torch.library.custom_op("mdt_kernels::linear_gelu_backward_triton", mutates_args=())
def linear_gelu_backward_triton(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, h, x2 = _rows(grad), h.contiguous(), _rows(x)
    M, D = h.shape
    chunk = max(1, min(64, cdiv(M, 512)))
    C = cdiv(M, chunk)
    dh = torch.empty_like(h)
    partial = h.new_zeros((C, D), dtype=acc_dtype(h.dtype))
    if h.numel() > 0:
        BLOCK_D = block_size(D)
        _linear_gelu_bwd_kernel[(C, cdiv(D, BLOCK_D))](g, h, bias.contiguous(), dh, partial, M, D, chunk,
                                                        BLOCK_D=BLOCK_D, ACC=tl_acc(h.dtype))
    db = partial.sum(0).to(bias.dtype)  # chunk partials reduced in a fixed order
    return torch.mm(dh, weight).view(x.shape), torch.mm(dh.t(), x2), db


# ---------------------------------------------------------------------------------------------------
# Checks and registration: fake kernels and autograd, shared by the C++ op and its Triton twin


def check(x, weight, bias, *, cast: bool = False) -> None:
    """linear's check, with the bias required (see mdt_kernels.ops.linear.check)."""
    _checks.check_tensor("bias", bias, 1, "(Dout,)")
    linear_ops.check(x, weight, bias, cast=cast)


def _fake_forward(x, weight, bias):
    check(x, weight, bias)
    M = math.prod(x.shape[:-1])  # not Size.numel(): that would specialise a symbolic token count
    return x.new_empty((*x.shape[:-1], weight.shape[0])), x.new_empty((M, weight.shape[0]))


def _fake_backward(grad, x, weight, bias, h):
    linear_ops.check(x, weight, bias, grad)
    _checks.check_shape("h", h, (math.prod(x.shape[:-1]), weight.shape[0]), "(rows of x, Dout)")
    _checks.check_dtype("h", h, x.dtype)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    _, h = output
    ctx.mark_non_differentiable(h)
    ctx.set_materialize_grads(False)  # no zero gradient for h
    ctx.save_for_backward(x, weight, bias, h)


def _backward(backward_op, ctx, grad, _grad_h):
    if grad is None:  # y did not reach the loss
        return None, None, None
    x, weight, bias, h = ctx.saved_tensors
    return backward_op(grad, x, weight, bias, h)


register_op("linear_gelu", fake_forward=_fake_forward, fake_backward=_fake_backward,
            setup_context=_setup_context, backward=_backward)


def _compiled(ops, x, weight, bias):
    return ops.linear_gelu(x, weight, bias)[0]


# Under no_grad / inference_mode the CPU backend runs linear_gelu_inference: no h is kept, GELU runs in place.
_inference = register_inference("linear_gelu", lambda x, weight, bias: _fake_forward(x, weight, bias)[0])

# ---------------------------------------------------------------------------------------------------
# Public function


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate="tanh")`` with the bias and GELU fused.

    Args:
        x: (..., Din) float32/float16/bfloat16/float64.
        weight: (Dout, Din) and bias: (Dout,), x's dtype (under autocast the three are cast to the
            autocast dtype, float64 ones excepted, as F.linear's are) and device.
    Returns:
        (..., Dout) in x's dtype. Differentiable in x, weight and bias.
    """
    check(x, weight, bias, cast=linear_ops.autocasting(x))
    backend, run = _dispatch.implementation("linear_gelu", x.device, x, weight, bias)
    if backend == "reference":  # F.linear autocasts itself
        return linear_gelu_ref(x, weight, bias)
    return run(*linear_ops.autocast_inputs(x, weight, bias))


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    """The MLP's first layer: (B, N, D) -> (B, N, F)."""
    shapes = ((s.B, s.N, s.D), (s.hidden, s.D), (s.hidden,))
    return [Example(tuple(torch.randn(*shape).to(dtype) for shape in shapes), grad=(0, 1, 2))]


declare(Op("linear_gelu", linear_gelu, compiled=_compiled, inference=_inference, examples=_examples, impls={
    "reference": linear_gelu_ref,
    "cpu": functools.partial(_compiled, torch.ops.mdt_kernels),
    "cuda": functools.partial(_compiled, torch.ops.mdt_kernels),
    "triton": lambda x, weight, bias: linear_gelu_triton(x, weight, bias)[0],
}))
