"""residual_adaln_modulate(x, gate, y, shift, scale) -> (h, out): the seam between two halves of a DiT/MDT
block, h = x + gate[:, None] * y (residual update after attention) and
out = LayerNorm_no_affine(h) * (1 + scale[:, None]) + shift[:, None] (input of the MLP), in one pass:
read x and y, write h and out. The statistics are taken from h as stored in its dtype, so the result
equals gated_residual followed by adaln_modulate.

Backward, with g = dout, gh = dh from the residual stream, hhat = (h - mean) * rstd, a = 1 + scale:

    dshift = sum_n g,  dscale = sum_n g * hhat
    dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a * hhat)) + gh
    dx = dh,  dy = gate * dh,  dgate = sum_n dh * y

one pass reading h, y, g and gh and writing dx and dy.
"""

from __future__ import annotations

import torch

from .. import _checks, _dispatch
from .._triton import acc_dtype, cdiv, jit, tl, tl_acc
from . import _adaln
from ._register import compiled_namespaces, compiled_op, sim_twin
from .adaln_modulate import adaln_modulate_ref
from .gated_residual import gated_residual_ref

# ---------------------------------------------------------------------------------------------------
# Reference


def residual_adaln_modulate_ref(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The composition of the two references (h rounded to x's dtype in between)."""
    h = gated_residual_ref(x, gate, y)
    return h, adaln_modulate_ref(h, shift, scale, eps)


# ---------------------------------------------------------------------------------------------------
# Triton kernels: one program per row forward; one per (sample, token chunk) backward. h is recomputed
# from x and y in each pass over the row (bit-identical), rather than read back after its store.


@jit
def _residual_adaln_fwd_kernel(
    x_ptr, gate_ptr, y_ptr, shift_ptr, scale_ptr, h_ptr, out_ptr, mean_ptr, rstd_ptr,
    N, D, g_sb, g_sd, sh_sb, sh_sd, sc_sb, sc_sd, eps,
    BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * N + n
    b = row // N
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + cols
        mask = offs < D
        x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
        h = (x + gt * y).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * D + offs, h, mask=mask)
        acc += h.to(ACC)
    mean = tl.sum(acc, 0) / D
    acc = tl.zeros([BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + cols
        mask = offs < D
        x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
        hc = tl.where(mask, (x + gt * y).to(h_ptr.dtype.element_ty).to(ACC) - mean, 0.0)
        acc += hc * hc
    rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / D + eps)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + cols
        mask = offs < D
        x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
        h = (x + gt * y).to(h_ptr.dtype.element_ty).to(ACC)
        a = 1.0 + tl.load(scale_ptr + b * sc_sb + offs * sc_sd, mask=mask, other=0.0).to(ACC)
        sh = tl.load(shift_ptr + b * sh_sb + offs * sh_sd, mask=mask, other=0.0).to(ACC)
        tl.store(out_ptr + row * D + offs, ((h - mean) * rstd * a + sh).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@jit
def _residual_adaln_bwd_kernel(
    gh_ptr, g_ptr, h_ptr, y_ptr, gate_ptr, scale_ptr, mean_ptr, rstd_ptr, dx_ptr, dy_ptr, part_ptr,
    N, D, C, CHUNK, g_sb, g_sd, sc_sb, sc_sd, PLANE,
    BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr, HAS_GH: tl.constexpr, ACC: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)  # b * C + chunk
    b = item // C
    n0 = (item % C) * CHUNK
    ps_ptr = part_ptr + item * D  # this program's dshift, dscale and dgate partial rows (zeroed)
    pc_ptr = ps_ptr + PLANE
    pg_ptr = pc_ptr + PLANE
    cols = tl.arange(0, BLOCK_D)
    acc_s = tl.zeros([BLOCK_D], ACC)
    acc_c = tl.zeros([BLOCK_D], ACC)
    acc_g = tl.zeros([BLOCK_D], ACC)
    for n in range(n0, tl.minimum(n0 + CHUNK, N)):
        row = b * N + n
        m = tl.load(mean_ptr + row)
        rs = tl.load(rstd_ptr + row)
        c1, c2, rsd, acc_s, acc_c = _adaln.modulate_grad_row(
            h_ptr + row * D, g_ptr + row * D, scale_ptr + b * sc_sb, sc_sd, m, rs, D, ps_ptr, pc_ptr, acc_s, acc_c,
            BLOCK_D, ONE_BLOCK, ACC,
        )
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + cols
            mask = offs < D
            hh = (tl.load(h_ptr + row * D + offs, mask=mask, other=0.0).to(ACC) - m) * rs
            g = tl.load(g_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
            a = 1.0 + tl.load(scale_ptr + b * sc_sb + offs * sc_sd, mask=mask, other=0.0).to(ACC)
            y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
            gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
            dh = rsd * (g * a - c1 - hh * c2)
            if HAS_GH:
                dh += tl.load(gh_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
            tl.store(dx_ptr + row * D + offs, dh.to(dx_ptr.dtype.element_ty), mask=mask)
            tl.store(dy_ptr + row * D + offs, (gt * dh).to(dy_ptr.dtype.element_ty), mask=mask)
            if ONE_BLOCK:
                acc_g += dh * y
            else:
                tl.store(pg_ptr + offs, tl.load(pg_ptr + offs, mask=mask) + dh * y, mask=mask)
    if ONE_BLOCK:
        tl.store(ps_ptr + cols, acc_s, mask=cols < D)
        tl.store(pc_ptr + cols, acc_c, mask=cols < D)
        tl.store(pg_ptr + cols, acc_g, mask=cols < D)


@torch.library.custom_op("mdt_kernels::residual_adaln_modulate_triton", mutates_args=())
def residual_adaln_modulate_triton(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = x.contiguous(), y.contiguous()
    B, N, D = x.shape
    h, out = torch.empty_like(x), torch.empty_like(x)
    mean = x.new_empty((B, N), dtype=acc_dtype(x.dtype))
    rstd = torch.empty_like(mean)
    if B * N > 0:
        BLOCK_D = _adaln.row_block(D)
        _residual_adaln_fwd_kernel[(B * N,)](
            x, gate, y, shift, scale, h, out, mean, rstd, N, D, *gate.stride(), *shift.stride(), *scale.stride(),
            eps, BLOCK_D=BLOCK_D, ACC=tl_acc(x.dtype), num_warps=_adaln.num_warps(BLOCK_D),
        )
    return h, out, mean, rstd


@torch.library.custom_op("mdt_kernels::residual_adaln_modulate_backward_triton", mutates_args=())
def residual_adaln_modulate_backward_triton(
    grad_h: torch.Tensor | None, grad_out: torch.Tensor, h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
    scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out, h, y = grad_out.contiguous(), h.contiguous(), y.contiguous()
    mean, rstd = mean.contiguous(), rstd.contiguous()
    grad_h = grad_h.contiguous() if grad_h is not None else None
    B, N, D = h.shape
    chunk = _adaln.token_chunk(B, N)
    C = cdiv(N, chunk)
    dx, dy = torch.empty_like(h), torch.empty_like(h)
    partial = h.new_zeros((3, B, C, D), dtype=acc_dtype(h.dtype))
    if B * C * D > 0:
        BLOCK_D = _adaln.row_block(D)
        _residual_adaln_bwd_kernel[(B * C,)](
            grad_out if grad_h is None else grad_h, grad_out, h, y, gate, scale, mean, rstd, dx, dy, partial,
            N, D, C, chunk, *gate.stride(), *scale.stride(), B * C * D,
            BLOCK_D=BLOCK_D, ONE_BLOCK=D <= BLOCK_D, HAS_GH=grad_h is not None, ACC=tl_acc(h.dtype),
            num_warps=_adaln.num_warps(BLOCK_D),
        )
    dshift, dscale, dgate = (partial[i].sum(1).to(h.dtype) for i in range(3))  # fixed-order chunk reduction
    return dx, dgate, dy, dshift, dscale


# ---------------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels and autograd for the C++/CUDA op and its Triton twin


def _fake_forward(x, gate, y, shift, scale, eps):
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x.dtype))
    return x.new_empty(x.shape), x.new_empty(x.shape), stats, torch.empty_like(stats)


def _fake_backward(grad_h, grad_out, h, y, gate, scale, mean, rstd):
    B, _, D = h.shape
    return h.new_empty(h.shape), h.new_empty((B, D)), h.new_empty(h.shape), h.new_empty((B, D)), h.new_empty((B, D))


def _setup_context(ctx, inputs, output):
    _, gate, y, _, scale, _ = inputs
    h, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # an unused h passes grad_h=None: no zero tensor to read
    ctx.save_for_backward(h, y, gate, scale, mean, rstd)


def _autograd(backward_op):
    def backward(ctx, grad_h, grad_out, _grad_mean, _grad_rstd):
        if grad_h is None and grad_out is None:
            return None, None, None, None, None, None
        h, y, gate, scale, mean, rstd = ctx.saved_tensors
        if grad_out is None:  # out unused: only the residual gradient flows
            grad_out = torch.zeros_like(h)
        dx, dgate, dy, dshift, dscale = backward_op(grad_h, grad_out, h, y, gate, scale, mean, rstd)
        return dx, dgate, dy, dshift, dscale, None

    return backward


torch.library.register_fake("mdt_kernels::residual_adaln_modulate_triton", _fake_forward)
torch.library.register_fake("mdt_kernels::residual_adaln_modulate_backward_triton", _fake_backward)
torch.library.register_autograd(
    "mdt_kernels::residual_adaln_modulate_triton",
    _autograd(residual_adaln_modulate_backward_triton),
    setup_context=_setup_context,
)
for _ns in compiled_namespaces():
    torch.library.register_fake(f"{_ns}::residual_adaln_modulate", _fake_forward)
    torch.library.register_fake(f"{_ns}::residual_adaln_modulate_backward", _fake_backward)
    torch.library.register_autograd(
        f"{_ns}::residual_adaln_modulate",
        _autograd(compiled_op(_ns, "residual_adaln_modulate_backward")),
        setup_context=_setup_context,
    )


def _compiled(x, gate, y, shift, scale, eps, ops=torch.ops.mdt_kernels):
    h, out, _, _ = ops.residual_adaln_modulate(x, gate, y, shift, scale, eps)
    return h, out


def _triton(x, gate, y, shift, scale, eps):
    h, out, _, _ = residual_adaln_modulate_triton(x, gate, y, shift, scale, eps)
    return h, out


IMPLS = {"reference": residual_adaln_modulate_ref, "cpu": _compiled, "cuda": _compiled, "triton": _triton}
IMPLS["cuda_sim"] = sim_twin(_compiled)  # the test-only backend: the cuda bindings on csrc/simt

# ---------------------------------------------------------------------------------------------------
# Public function


def residual_adaln_modulate(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated residual update followed by the adaLN modulation of the next sub-layer, in one pass.

    Args:
        x: (B, N, D) float32/float16/bfloat16/float64 residual stream.
        gate: (B, D) gate of the branch that produced y.
        y: (B, N, D) branch output (attention or MLP).
        shift, scale: (B, D) modulation of the next sub-layer.
        gate, shift and scale may have any strides (``chunk`` views are used as they are); all tensors
        share x's dtype and device.
        eps: added to the variance.
    Returns:
        (h, out): h = x + gate[:, None] * y (the new residual stream) and
        out = layer_norm(h) * (1 + scale[:, None]) + shift[:, None], both (B, N, D) of x's dtype, computed
        in fp32 (fp64 for fp64). Differentiable in every tensor input, through h and out.
    """
    _adaln.check_tokens("x", x)
    _adaln.check_mod("gate", gate, x)
    _adaln.check_like("y", y, x)
    _adaln.check_mod("shift", shift, x)
    _adaln.check_mod("scale", scale, x)
    _checks.check_same("device", x=x, gate=gate, y=y, shift=shift, scale=scale)
    _checks.check_same("dtype", x=x, gate=gate, y=y, shift=shift, scale=scale)
    eps = _adaln.check_eps(eps)
    return IMPLS[_dispatch.resolve("residual_adaln_modulate", x.device)](x, gate, y, shift, scale, eps)
