"""gated_residual(x, gate, y) = x + gate[:, None] * y: the adaLN-Zero residual update of DiT/MDT blocks.

gate is a (B,D) view from ``adaLN_modulation(c).chunk(6, dim=1)``, read through its strides. Eager
PyTorch writes gate*y to a temporary and then adds (5 passes); the kernels read x and y and write
the sum (3). Backward, with g = dout: dx = g (returned as is, no copy), dy = gate * g and
dgate = sum_n g * y, in one pass over g and y.
"""

from __future__ import annotations

import torch

from .. import _checks, _dispatch
from .._triton import acc_dtype, block_size, cdiv, jit, tl, tl_acc
from . import _adaln
from ._register import compiled_namespaces, compiled_op, sim_twin

# ---------------------------------------------------------------------------------------------------
# Reference


def gated_residual_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch, computed in fp32 (fp64 for fp64) and rounded once to x's dtype."""
    acc = acc_dtype(x.dtype)
    return (x.to(acc) + gate.to(acc)[:, None] * y.to(acc)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Triton kernels: elementwise forward; backward programs own (sample, token chunk, column block), so
# the dgate partial of a chunk stays in registers.


@jit
def _gated_residual_fwd_kernel(x_ptr, gate_ptr, y_ptr, out_ptr, N, D, g_sb, g_sd,
                               BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * N + n
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    b = row // N
    x = tl.load(x_ptr + row * D + offs, mask=mask).to(ACC)
    y = tl.load(y_ptr + row * D + offs, mask=mask).to(ACC)
    gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask).to(ACC)
    tl.store(out_ptr + row * D + offs, (x + gt * y).to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _gated_residual_bwd_kernel(g_ptr, gate_ptr, y_ptr, dy_ptr, part_ptr, N, D, C, CHUNK, g_sb, g_sd,
                               BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    item = tl.program_id(0).to(tl.int64)  # b * C + chunk
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    b = item // C
    n0 = (item % C) * CHUNK
    gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_D], ACC)
    for n in range(n0, tl.minimum(n0 + CHUNK, N)):
        row = b * N + n
        g = tl.load(g_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        tl.store(dy_ptr + row * D + offs, (gt * g).to(dy_ptr.dtype.element_ty), mask=mask)
        acc += g * y
    tl.store(part_ptr + item * D + offs, acc, mask=mask)


@torch.library.custom_op("mdt_kernels::gated_residual_triton", mutates_args=())
def gated_residual_triton(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.contiguous(), y.contiguous()
    B, N, D = x.shape
    out = torch.empty_like(x)
    if out.numel() > 0:
        BLOCK_D = block_size(D)
        _gated_residual_fwd_kernel[(B * N, cdiv(D, BLOCK_D))](
            x, gate, y, out, N, D, *gate.stride(), BLOCK_D=BLOCK_D, ACC=tl_acc(x.dtype)
        )
    return out


@torch.library.custom_op("mdt_kernels::gated_residual_backward_triton", mutates_args=())
def gated_residual_backward_triton(
    grad: torch.Tensor, gate: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad, y = grad.contiguous(), y.contiguous()
    B, N, D = y.shape
    chunk = _adaln.token_chunk(B, N)
    C = cdiv(N, chunk)
    dy = torch.empty_like(y)
    partial = y.new_zeros((B, C, D), dtype=acc_dtype(y.dtype))
    if partial.numel() > 0:
        BLOCK_D = block_size(D)
        _gated_residual_bwd_kernel[(B * C, cdiv(D, BLOCK_D))](
            grad, gate, y, dy, partial, N, D, C, chunk, *gate.stride(), BLOCK_D=BLOCK_D, ACC=tl_acc(y.dtype)
        )
    return partial.sum(1).to(y.dtype), dy  # chunk partials reduced in a fixed order


# ---------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd for the C++/CUDA op and its Triton twin


def _fake_forward(x, gate, y):
    return x.new_empty(x.shape)


def _fake_backward(grad, gate, y):
    return y.new_empty((y.shape[0], y.shape[2])), y.new_empty(y.shape)


def _setup_context(ctx, inputs, output):
    _, gate, y = inputs
    ctx.save_for_backward(gate, y)


def _autograd(backward_op):
    def backward(ctx, grad):
        if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            return grad, None, None
        gate, y = ctx.saved_tensors
        dgate, dy = backward_op(grad, gate, y)
        return grad, dgate, dy  # d(out)/dx is the identity

    return backward


torch.library.register_fake("mdt_kernels::gated_residual_triton", _fake_forward)
torch.library.register_fake("mdt_kernels::gated_residual_backward_triton", _fake_backward)
torch.library.register_autograd(
    "mdt_kernels::gated_residual_triton", _autograd(gated_residual_backward_triton), setup_context=_setup_context
)
for _ns in compiled_namespaces():
    torch.library.register_fake(f"{_ns}::gated_residual", _fake_forward)
    torch.library.register_fake(f"{_ns}::gated_residual_backward", _fake_backward)
    torch.library.register_autograd(
        f"{_ns}::gated_residual",
        _autograd(compiled_op(_ns, "gated_residual_backward")),
        setup_context=_setup_context,
    )


def _compiled(x, gate, y, ops=torch.ops.mdt_kernels):
    return ops.gated_residual(x, gate, y)


IMPLS = {"reference": gated_residual_ref, "cpu": _compiled, "cuda": _compiled, "triton": gated_residual_triton}
IMPLS["cuda_sim"] = sim_twin(_compiled)  # the test-only backend: the cuda bindings on csrc/simt

# ---------------------------------------------------------------------------------------------------
# Public function


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The gated residual update ``x + gate[:, None] * y`` of adaLN-Zero blocks.

    Args:
        x: (B, N, D) float32/float16/bfloat16/float64 residual stream.
        gate: (B, D) per-sample gate of x's dtype and device, any strides (a ``chunk`` view is used as is).
        y: (B, N, D) branch output (attention or MLP) of x's dtype and device.
    Returns:
        (B, N, D) tensor of x's dtype, computed in fp32 (fp64 for fp64) and rounded once.
        Differentiable in x, gate and y.
    """
    _adaln.check_tokens("x", x)
    _adaln.check_mod("gate", gate, x)
    _adaln.check_like("y", y, x)
    _checks.check_same("device", x=x, gate=gate, y=y)
    _checks.check_same("dtype", x=x, gate=gate, y=y)
    return IMPLS[_dispatch.resolve("gated_residual", x.device)](x, gate, y)
