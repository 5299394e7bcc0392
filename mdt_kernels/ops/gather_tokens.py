"""gather_tokens(x, ids) -> x[b, ids[b, k]] for every sample b: the encoder input of MDT's masked pass.

MDT (like MAE) writes this as ``torch.gather(x, 1, ids.unsqueeze(-1).repeat(1, 1, D))``, which builds an
int64 (B,K,D) index: 8 bytes of index per element moved. The kernels here read one int64 per row.
Backward scatter-adds the gradient rows back (duplicate ids accumulate).
"""

from __future__ import annotations

import functools

import torch

from .. import _checks, _dispatch
from .._registry import Example, Op, Sizes, declare, example_ids
from .._triton import acc_dtype, block_size, cdiv, jit, tl
from ._register import register_op

# ---------------------------------------------------------------------------------------------------
# Reference


def gather_tokens_ref(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: an expanded (not materialised) index into torch.gather."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ---------------------------------------------------------------------------------------------------
# Triton kernels


@jit
def _gather_tokens_fwd_kernel(x_ptr, ids_ptr, out_ptr, N, K, D, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * K + k
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    src = (row // K * N + tl.load(ids_ptr + row)) * D
    tl.store(out_ptr + row * D + offs, tl.load(x_ptr + src + offs, mask=mask), mask=mask)


@jit
def _gather_tokens_bwd_kernel(grad_ptr, ids_ptr, dx_ptr, N, K, D, BLOCK_D: tl.constexpr):
    # dx is zeroed fp32 (fp64 for fp64); atomics make duplicate ids accumulate (in arbitrary order on GPU).
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    dst = (row // K * N + tl.load(ids_ptr + row)) * D
    g = tl.load(grad_ptr + row * D + offs, mask=mask).to(dx_ptr.dtype.element_ty)
    tl.atomic_add(dx_ptr + dst + offs, g, mask=mask)


@torch.library.custom_op("mdt_kernels::gather_tokens_triton", mutates_args=())
def gather_tokens_triton(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    x, ids = x.contiguous(), ids.contiguous()
    (B, N, D), K = x.shape, ids.shape[1]
    out = x.new_empty((B, K, D))
    if out.numel() > 0:
        BLOCK_D = block_size(D)
        _gather_tokens_fwd_kernel[(B * K, cdiv(D, BLOCK_D))](x, ids, out, N, K, D, BLOCK_D=BLOCK_D)
    return out


@torch.library.custom_op("mdt_kernels::gather_tokens_backward_triton", mutates_args=())
def gather_tokens_backward_triton(grad: torch.Tensor, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    grad, ids = grad.contiguous(), ids.contiguous()
    (B, K, D), N = grad.shape, num_tokens
    dx = grad.new_zeros((B, N, D), dtype=acc_dtype(grad.dtype))
    if grad.numel() > 0:
        BLOCK_D = block_size(D)
        _gather_tokens_bwd_kernel[(B * K, cdiv(D, BLOCK_D))](grad, ids, dx, N, K, D, BLOCK_D=BLOCK_D)
    return dx.to(grad.dtype)


# ---------------------------------------------------------------------------------------------------
# Checks and registration: fake (meta) kernels and autograd for the C++/CUDA op and its Triton twin


def check(x, ids):
    """x (B, N, D) float and ids (B, K) int64 on one device: the public function's arguments (int32 ids
    widened) and the fake kernel's."""
    _checks.check_tensor("x", x, 3, "(B, N, D)")
    _checks.check_float("x", x)
    _checks.check_ids("ids", ids, x.shape[0])
    _checks.check_same("device", x=x, ids=ids)


def _fake_forward(x, ids):
    check(x, ids)
    return x.new_empty((x.shape[0], ids.shape[1], x.shape[2]))


def _fake_backward(grad, ids, num_tokens):
    _checks.check_tensor("grad", grad, 3, "(B, K, D)")
    _checks.check_float("grad", grad)
    _checks.check_ids("ids", ids, grad.shape[0], grad.shape[1], tokens_of="grad")
    return grad.new_empty((grad.shape[0], num_tokens, grad.shape[2]))


def _setup_context(ctx, inputs, output):
    x, ids = inputs
    ctx.save_for_backward(ids)
    ctx.num_tokens = x.shape[1]


def _backward(backward_op, ctx, grad):
    (ids,) = ctx.saved_tensors
    return backward_op(grad, ids, ctx.num_tokens), None


register_op("gather_tokens", fake_forward=_fake_forward, fake_backward=_fake_backward, setup_context=_setup_context,
            backward=_backward)


def _compiled(ops, x, ids):
    return ops.gather_tokens(x, ids)


# ---------------------------------------------------------------------------------------------------
# Public function


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gathers the tokens ``ids`` of every sample.

    Args:
        x: (B, N, D) float32/float16/bfloat16/float64 tokens.
        ids: (B, K) integer positions in [0, N) (int64, or int32 which is widened). Duplicates are
            allowed; their gradients accumulate.
    Returns:
        (B, K, D) tensor of x's dtype with ``out[b, k] = x[b, ids[b, k]]``. Differentiable in x.
    """
    ids = _checks.as_ids("ids", ids)
    check(x, ids)
    backend, run = _dispatch.implementation("gather_tokens", x.device, x)
    if backend != "cpu":  # the C++ CPU kernel checks id values itself (and so do compiled graphs that call it)
        _checks.check_id_values("ids", ids, x.shape[1])
    return run(x, ids)


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    return [Example((torch.randn(s.B, s.N, s.D).to(dtype), example_ids(s.B, s.K, s.N)), grad=(0,))]


declare(Op("gather_tokens", gather_tokens, compiled=_compiled, examples=_examples, impls={
    "reference": gather_tokens_ref,
    "cpu": functools.partial(_compiled, torch.ops.mdt_kernels),
    "cuda": functools.partial(_compiled, torch.ops.mdt_kernels),
    "triton": gather_tokens_triton,
}))
