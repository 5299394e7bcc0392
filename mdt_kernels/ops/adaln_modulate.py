"""adaln_modulate(x, shift, scale) = LayerNorm_no_affine(x) * (1 + scale[:, None]) + shift[:, None].

The DiT/MDT block does this twice per block, with shift/scale from ``adaLN_modulation(c).chunk(6, dim=1)``
(strided (B,D) views, row stride 6D). Eager PyTorch makes three passes (layer_norm, mul, add) and
materialises two temporaries; the kernels read x once and write the output once, reading shift/scale
through their strides. The forward also returns the per-row mean and rstd, so that the backward
(dx, dshift, dscale) reads only x and dout:

    xhat = (x - mean) * rstd,  a = 1 + scale,  g = dout
    dshift = sum_n g,  dscale = sum_n g * xhat
    dx = rstd * (g*a - mean_d(g*a) - xhat * mean_d(g*a * xhat))

Statistics and sums are fp32 for fp16/bf16/fp32 (fp64 for fp64); outputs keep x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from .._triton import acc_dtype, cdiv, jit, tl, tl_acc
from . import _adaln
from ._register import compiled_namespaces, compiled_op, sim_twin

# ---------------------------------------------------------------------------------------------------
# Reference


def adaln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain PyTorch, computed in fp32 (fp64 for fp64) and rounded once to x's dtype."""
    acc = acc_dtype(x.dtype)
    xa, sh, sc = x.to(acc), shift.to(acc), scale.to(acc)
    return (F.layer_norm(xa, (x.shape[-1],), eps=eps) * (1 + sc[:, None]) + sh[:, None]).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Triton kernels: one program per row forward; one per (sample, token chunk) backward.


@jit
def _adaln_modulate_fwd_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr, mean_ptr, rstd_ptr,
    N, D, sh_sb, sh_sd, sc_sb, sc_sd, eps,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * N + n
    b = row // N
    x_row = x_ptr + row * D
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        acc += tl.load(x_row + d0 + cols, mask=d0 + cols < D, other=0.0).to(ACC)
    mean = tl.sum(acc, 0) / D
    acc = tl.zeros([BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        mask = d0 + cols < D
        xc = tl.where(mask, tl.load(x_row + d0 + cols, mask=mask, other=0.0).to(ACC) - mean, 0.0)
        acc += xc * xc
    rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / D + eps)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + cols
        mask = offs < D
        x = tl.load(x_row + offs, mask=mask, other=0.0).to(ACC)
        a = 1.0 + tl.load(scale_ptr + b * sc_sb + offs * sc_sd, mask=mask, other=0.0).to(ACC)
        sh = tl.load(shift_ptr + b * sh_sb + offs * sh_sd, mask=mask, other=0.0).to(ACC)
        y = (x - mean) * rstd * a + sh
        tl.store(out_ptr + row * D + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@jit
def _adaln_modulate_bwd_kernel(
    g_ptr, x_ptr, scale_ptr, mean_ptr, rstd_ptr, dx_ptr, part_ptr,
    N, D, C, CHUNK, sc_sb, sc_sd, PLANE,
    BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)  # b * C + chunk
    b = item // C
    n0 = (item % C) * CHUNK
    n1 = tl.minimum(n0 + CHUNK, N)
    ps_ptr = part_ptr + item * D  # this program's dshift partial row
    pc_ptr = ps_ptr + PLANE  # and its dscale partial row (both zeroed by the launcher)
    cols = tl.arange(0, BLOCK_D)
    acc_s = tl.zeros([BLOCK_D], ACC)
    acc_c = tl.zeros([BLOCK_D], ACC)
    for n in range(n0, n1):
        row = b * N + n
        m = tl.load(mean_ptr + row)
        rs = tl.load(rstd_ptr + row)
        c1, c2, rsd, acc_s, acc_c = _adaln.modulate_grad_row(
            x_ptr + row * D, g_ptr + row * D, scale_ptr + b * sc_sb, sc_sd, m, rs, D, ps_ptr, pc_ptr, acc_s, acc_c,
            BLOCK_D, ONE_BLOCK, ACC,
        )
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + cols
            mask = offs < D
            x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
            g = tl.load(g_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
            a = 1.0 + tl.load(scale_ptr + b * sc_sb + offs * sc_sd, mask=mask, other=0.0).to(ACC)
            dx = rsd * (g * a - c1 - (x - m) * rs * c2)
            tl.store(dx_ptr + row * D + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if ONE_BLOCK:
        tl.store(ps_ptr + cols, acc_s, mask=cols < D)
        tl.store(pc_ptr + cols, acc_c, mask=cols < D)


@torch.library.custom_op("mdt_kernels::adaln_modulate_triton", mutates_args=())
def adaln_modulate_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    B, N, D = x.shape
    out = torch.empty_like(x)
    mean = x.new_empty((B, N), dtype=acc_dtype(x.dtype))
    rstd = torch.empty_like(mean)
    if B * N > 0:
        BLOCK_D = _adaln.row_block(D)
        _adaln_modulate_fwd_kernel[(B * N,)](
            x, shift, scale, out, mean, rstd, N, D, *shift.stride(), *scale.stride(), eps,
            BLOCK_D=BLOCK_D, ACC=tl_acc(x.dtype), num_warps=_adaln.num_warps(BLOCK_D),
        )
    return out, mean, rstd


@torch.library.custom_op("mdt_kernels::adaln_modulate_backward_triton", mutates_args=())
def adaln_modulate_backward_triton(
    grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad, x, mean, rstd = grad.contiguous(), x.contiguous(), mean.contiguous(), rstd.contiguous()
    B, N, D = x.shape
    chunk = _adaln.token_chunk(B, N)
    C = cdiv(N, chunk)
    dx = torch.empty_like(x)
    partial = x.new_zeros((2, B, C, D), dtype=acc_dtype(x.dtype))
    if B * C * D > 0:
        BLOCK_D = _adaln.row_block(D)
        _adaln_modulate_bwd_kernel[(B * C,)](
            grad, x, scale, mean, rstd, dx, partial, N, D, C, chunk, *scale.stride(), B * C * D,
            BLOCK_D=BLOCK_D, ONE_BLOCK=D <= BLOCK_D, ACC=tl_acc(x.dtype), num_warps=_adaln.num_warps(BLOCK_D),
        )
    # chunk partials reduced by torch.sum: a fixed order, no atomics
    return dx, partial[0].sum(1).to(x.dtype), partial[1].sum(1).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd for the C++/CUDA op and its Triton twin


def _fake_forward(x, shift, scale, eps):
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x.dtype))
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


def _fake_backward(grad, x, scale, mean, rstd):
    B, _, D = x.shape
    return x.new_empty(x.shape), x.new_empty((B, D)), x.new_empty((B, D))


def _setup_context(ctx, inputs, output):
    x, _, scale, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (unused) gradients
    ctx.save_for_backward(x, scale, mean, rstd)


def _autograd(backward_op):
    def backward(ctx, grad, _grad_mean, _grad_rstd):
        if grad is None:  # out's gradient is undefined (grads are not materialised)
            return None, None, None, None
        x, scale, mean, rstd = ctx.saved_tensors
        dx, dshift, dscale = backward_op(grad, x, scale, mean, rstd)
        return dx, dshift, dscale, None

    return backward


torch.library.register_fake("mdt_kernels::adaln_modulate_triton", _fake_forward)
torch.library.register_fake("mdt_kernels::adaln_modulate_backward_triton", _fake_backward)
torch.library.register_autograd(
    "mdt_kernels::adaln_modulate_triton", _autograd(adaln_modulate_backward_triton), setup_context=_setup_context
)
for _ns in compiled_namespaces():
    torch.library.register_fake(f"{_ns}::adaln_modulate", _fake_forward)
    torch.library.register_fake(f"{_ns}::adaln_modulate_backward", _fake_backward)
    torch.library.register_autograd(
        f"{_ns}::adaln_modulate",
        _autograd(compiled_op(_ns, "adaln_modulate_backward")),
        setup_context=_setup_context,
    )


def _compiled(x, shift, scale, eps, ops=torch.ops.mdt_kernels):
    return ops.adaln_modulate(x, shift, scale, eps)[0]


def _triton(x, shift, scale, eps):
    return adaln_modulate_triton(x, shift, scale, eps)[0]


IMPLS = {"reference": adaln_modulate_ref, "cpu": _compiled, "cuda": _compiled, "triton": _triton}
IMPLS["cuda_sim"] = sim_twin(_compiled)  # the test-only backend: the cuda bindings on csrc/simt

# ---------------------------------------------------------------------------------------------------
# Public function


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then the adaLN modulation of DiT/MDT blocks.

    Args:
        x: (B, N, D) float32/float16/bfloat16/float64 tokens.
        shift, scale: (B, D) per-sample modulation of x's dtype and device, any strides (the views from
            ``adaLN_modulation(c).chunk(6, dim=1)`` are used as they are, without a copy).
        eps: added to the variance.
    Returns:
        (B, N, D) tensor of x's dtype, ``layer_norm(x) * (1 + scale[:, None]) + shift[:, None]``, with the
        statistics computed in fp32 (fp64 for fp64). Differentiable in x, shift and scale.
    """
    _adaln.check_tokens("x", x)
    _adaln.check_mod("shift", shift, x)
    _adaln.check_mod("scale", scale, x)
    _checks.check_same("device", x=x, shift=shift, scale=scale)
    _checks.check_same("dtype", x=x, shift=shift, scale=scale)
    eps = _adaln.check_eps(eps)
    return IMPLS[_dispatch.resolve("adaln_modulate", x.device)](x, shift, scale, eps)
