"""The adaLN family of DiT/MDT blocks: two steps, written once, and the three ops built from them.

    residual    h = x + gate[:, None] * y                                          (adaLN-Zero update)
    modulate    out = LayerNorm_no_affine(h) * (1 + scale[:, None]) + shift[:, None]

- ``gated_residual(x, gate, y)`` = the residual step alone;
- ``adaln_modulate(x, shift, scale)`` = the modulate step alone (h = x);
- ``residual_adaln_modulate(x, gate, y, shift, scale)`` -> (h, out), both steps in one pass (the seam
  between attention and MLP). The statistics are taken from h as stored in its dtype, so the result
  equals gated_residual followed by adaln_modulate.

gate, shift and scale are (B,D) views from ``adaLN_modulation(c).chunk(6, dim=1)`` (row stride 6D), read
through their strides. Eager PyTorch makes a pass per operation and materialises temporaries; the kernels
read each input once and write each output once. The forward of the modulate step also returns the
per-row mean and rstd, so that its backward reads only h and the gradients. Backward, with g = dout,
gh = dh from the residual stream, hhat = (h - mean) * rstd, a = 1 + scale:

    dshift = sum_n g,  dscale = sum_n g * hhat
    dh = rstd * (g*a - mean_d(g*a) - hhat * mean_d(g*a * hhat)) + gh      (modulate; else dh = g)
    dx = dh,  dy = gate * dh,  dgate = sum_n dh * y                        (residual)

gated_residual returns dx = g as is (no copy). Statistics and sums are fp32 for fp16/bf16/fp32 (fp64 for
fp64); outputs keep x's dtype. Each op is registered as the C++/CUDA op ``mdt_kernels::<op>`` and its
Triton twin ``mdt_kernels::<op>_triton`` (one Triton kernel family, the steps picked by constexpr flags).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from .._registry import Example, Op, Sizes, declare, example_rows
from .._triton import acc_dtype, block_size, cdiv, jit, tl, tl_acc
from ._register import register_inference, register_op

# ---------------------------------------------------------------------------------------------------
# Reference


def adaln_ref(x, gate=None, y=None, shift=None, scale=None, eps: float = 1e-6):
    """Plain PyTorch, each step computed in fp32 (fp64 for fp64) and rounded once to x's dtype.

    Returns (h, out): h = x + gate[:, None] * y when gate is given (else x), out the modulation of h
    when shift and scale are given (else None)."""
    acc = acc_dtype(x.dtype)
    h = x if gate is None else (x.to(acc) + gate.to(acc)[:, None] * y.to(acc)).to(x.dtype)
    if scale is None:
        return h, None
    out = F.layer_norm(h.to(acc), (x.shape[-1],), eps=eps) * (1 + scale.to(acc)[:, None]) + shift.to(acc)[:, None]
    return h, out.to(x.dtype)


def gated_residual_ref(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return adaln_ref(x, gate, y)[0]


def adaln_modulate_ref(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return adaln_ref(x, shift=shift, scale=scale, eps=eps)[1]


def residual_adaln_modulate_ref(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    return adaln_ref(x, gate, y, shift, scale, eps)


# ---------------------------------------------------------------------------------------------------
# Triton kernels: one program per row forward; one per (sample, token chunk) backward. RESIDUAL and
# MODULATE pick the steps. h is recomputed from x and y in each pass over the row (bit-identical),
# rather than read back after its store.

# Programs walk a row in blocks of at most MAX_BLOCK_D elements. Rows that fit in one block keep the
# per-sample partial sums of the backward in registers; longer rows accumulate them in the program's
# own slot of the partial buffer (read-modify-write by one program: still deterministic).
MAX_BLOCK_D = 4096


def row_block(D: int) -> int:
    return block_size(D, cap=MAX_BLOCK_D)


def num_warps(block: int) -> int:
    """Warps for a program holding a few [block] fp32 tensors: about 8 to 16 elements per thread each."""
    return 4 if block <= 1024 else 8 if block <= 2048 else 16


def token_chunk(B: int, N: int) -> int:
    """Tokens per backward program (GPU): enough programs to fill the device, few enough partial rows.
    Depends only on the shape, so results are reproducible."""
    return max(1, min(N, 64, max(4, cdiv(B * N, 512))))


@jit
def _load_h(x_ptr, gate_ptr, y_ptr, h_ptr, row, b, offs, mask, D, g_sb, g_sd,
            RESIDUAL: tl.constexpr, ACC: tl.constexpr):
    """A block of the normalised row: x, or h = x + gate * y rounded to h's dtype."""
    x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
    if RESIDUAL:
        y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
        gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
        x = (x + gt * y).to(h_ptr.dtype.element_ty).to(ACC)
    return x


@jit
def _adaln_fwd_kernel(
    x_ptr, gate_ptr, y_ptr, shift_ptr, scale_ptr, h_ptr, out_ptr, mean_ptr, rstd_ptr,
    N, D, g_sb, g_sd, sh_sb, sh_sd, sc_sb, sc_sd, eps,
    BLOCK_D: tl.constexpr, RESIDUAL: tl.constexpr, MODULATE: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * N + n
    b = row // N
    cols = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + cols
        mask = offs < D
        h = _load_h(x_ptr, gate_ptr, y_ptr, h_ptr, row, b, offs, mask, D, g_sb, g_sd, RESIDUAL, ACC)
        if RESIDUAL:
            tl.store(h_ptr + row * D + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
        if MODULATE:
            acc += h
    if MODULATE:
        mean = tl.sum(acc, 0) / D
        acc = tl.zeros([BLOCK_D], ACC)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + cols
            mask = offs < D
            h = _load_h(x_ptr, gate_ptr, y_ptr, h_ptr, row, b, offs, mask, D, g_sb, g_sd, RESIDUAL, ACC)
            hc = tl.where(mask, h - mean, 0.0)
            acc += hc * hc
        rstd = 1.0 / tl.sqrt(tl.sum(acc, 0) / D + eps)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + cols
            mask = offs < D
            h = _load_h(x_ptr, gate_ptr, y_ptr, h_ptr, row, b, offs, mask, D, g_sb, g_sd, RESIDUAL, ACC)
            a = 1.0 + tl.load(scale_ptr + b * sc_sb + offs * sc_sd, mask=mask, other=0.0).to(ACC)
            sh = tl.load(shift_ptr + b * sh_sb + offs * sh_sd, mask=mask, other=0.0).to(ACC)
            tl.store(out_ptr + row * D + offs, ((h - mean) * rstd * a + sh).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)


@jit
def _modulate_grad_row(x_row, g_row, sc_row, sc_sd, m, rs, D, ps_ptr, pc_ptr, acc_s, acc_c,
                       BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Backward of the modulate step, first pass over one row (xhat = (x - m) * rs, a = 1 + scale,
    g = dout): adds g and g * xhat to the dshift/dscale partials (registers acc_s/acc_c when the row is
    one block, else this program's rows ps_ptr/pc_ptr) and returns (c1, c2, rsd, acc_s, acc_c) of
    dx = rsd * (g*a - c1 - xhat * c2), c1 = mean_d(g*a), c2 = mean_d(g*a*xhat)."""
    cols = tl.arange(0, BLOCK_D)
    v1 = tl.zeros([BLOCK_D], ACC)
    v2 = tl.zeros([BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        offs = d0 + cols
        mask = offs < D
        xh = (tl.load(x_row + offs, mask=mask, other=0.0).to(ACC) - m) * rs
        g = tl.load(g_row + offs, mask=mask, other=0.0).to(ACC)
        a = 1.0 + tl.load(sc_row + offs * sc_sd, mask=mask, other=0.0).to(ACC)
        v1 += g * a
        v2 += g * a * xh
        if ONE_BLOCK:
            acc_s += g
            acc_c += g * xh
        else:
            tl.store(ps_ptr + offs, tl.load(ps_ptr + offs, mask=mask) + g, mask=mask)
            tl.store(pc_ptr + offs, tl.load(pc_ptr + offs, mask=mask) + g * xh, mask=mask)
    # One feature: d/dx is exactly 0 (no FMA rounding residue).
    return tl.sum(v1, 0) / D, tl.sum(v2, 0) / D, tl.where(D > 1, rs, 0.0), acc_s, acc_c


@jit
def _adaln_bwd_kernel(
    g_ptr, gh_ptr, h_ptr, y_ptr, gate_ptr, scale_ptr, mean_ptr, rstd_ptr, dx_ptr, dy_ptr, part_ptr,
    N, D, C, CHUNK, g_sb, g_sd, sc_sb, sc_sd, PLANE,
    BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr, RESIDUAL: tl.constexpr, MODULATE: tl.constexpr,
    HAS_GH: tl.constexpr, GATE_PLANE: tl.constexpr, ACC: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)  # b * C + chunk
    b = item // C
    n0 = (item % C) * CHUNK
    ps_ptr = part_ptr + item * D  # this program's partial rows (zeroed by the launcher): dshift,
    pc_ptr = ps_ptr + PLANE  # dscale (MODULATE)
    pg_ptr = ps_ptr + GATE_PLANE * PLANE  # and dgate (RESIDUAL)
    cols = tl.arange(0, BLOCK_D)
    acc_s = tl.zeros([BLOCK_D], ACC)
    acc_c = tl.zeros([BLOCK_D], ACC)
    acc_g = tl.zeros([BLOCK_D], ACC)
    for n in range(n0, tl.minimum(n0 + CHUNK, N)):
        row = b * N + n
        if MODULATE:
            m = tl.load(mean_ptr + row)
            rs = tl.load(rstd_ptr + row)
            c1, c2, rsd, acc_s, acc_c = _modulate_grad_row(
                h_ptr + row * D, g_ptr + row * D, scale_ptr + b * sc_sb, sc_sd, m, rs, D, ps_ptr, pc_ptr, acc_s,
                acc_c, BLOCK_D, ONE_BLOCK, ACC,
            )
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + cols
            mask = offs < D
            dh = tl.load(g_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
            if MODULATE:
                hh = (tl.load(h_ptr + row * D + offs, mask=mask, other=0.0).to(ACC) - m) * rs
                a = 1.0 + tl.load(scale_ptr + b * sc_sb + offs * sc_sd, mask=mask, other=0.0).to(ACC)
                dh = rsd * (dh * a - c1 - hh * c2)
                if HAS_GH:
                    dh += tl.load(gh_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
                tl.store(dx_ptr + row * D + offs, dh.to(dx_ptr.dtype.element_ty), mask=mask)
            if RESIDUAL:
                y = tl.load(y_ptr + row * D + offs, mask=mask, other=0.0).to(ACC)
                gt = tl.load(gate_ptr + b * g_sb + offs * g_sd, mask=mask, other=0.0).to(ACC)
                tl.store(dy_ptr + row * D + offs, (gt * dh).to(dy_ptr.dtype.element_ty), mask=mask)
                if ONE_BLOCK:
                    acc_g += dh * y
                else:
                    tl.store(pg_ptr + offs, tl.load(pg_ptr + offs, mask=mask) + dh * y, mask=mask)
    if ONE_BLOCK:
        if MODULATE:
            tl.store(ps_ptr + cols, acc_s, mask=cols < D)
            tl.store(pc_ptr + cols, acc_c, mask=cols < D)
        if RESIDUAL:
            tl.store(pg_ptr + cols, acc_g, mask=cols < D)


def _strides(t: torch.Tensor | None) -> tuple:
    return t.stride() if t is not None else (0, 0)


def _forward(x, gate, y, shift, scale, eps):
    """Launches the forward kernel: the residual step when gate is given, the modulate step when scale is.
    Returns (h, out, mean, rstd), the outputs of the steps not run None."""
    residual, modulate = gate is not None, scale is not None
    x = x.contiguous()
    y = y.contiguous() if residual else x
    B, N, D = x.shape
    h = torch.empty_like(x) if residual else None
    out = torch.empty_like(x) if modulate else None
    mean = x.new_empty((B, N), dtype=acc_dtype(x.dtype)) if modulate else None
    rstd = torch.empty_like(mean) if modulate else None
    if B * N > 0:
        BLOCK_D = row_block(D)
        _adaln_fwd_kernel[(B * N,)](
            x, *(t if t is not None else x for t in (gate, y, shift, scale, h, out, mean, rstd)),
            N, D, *_strides(gate), *_strides(shift), *_strides(scale), eps,
            BLOCK_D=BLOCK_D, RESIDUAL=residual, MODULATE=modulate, ACC=tl_acc(x.dtype), num_warps=num_warps(BLOCK_D),
        )
    return h, out, mean, rstd


def _backward(grad_out, grad_h, h, y, gate, scale, mean, rstd):
    """Launches the backward kernel for the steps of _forward (residual: gate given, modulate: scale
    given); grad_h is the residual stream's gradient (None: none). Returns (dx, dy, sums): dx None without
    the modulate step (it is grad_out), dy None without the residual step, sums the per-sample gradients
    (dshift, dscale if modulate) + (dgate if residual) reduced over the token chunks in a fixed order."""
    residual, modulate = gate is not None, scale is not None
    grad_out, h = grad_out.contiguous(), h.contiguous()
    y = y.contiguous() if residual else h
    mean, rstd = (mean.contiguous(), rstd.contiguous()) if modulate else (h, h)
    grad_h = grad_h.contiguous() if grad_h is not None else None
    B, N, D = h.shape
    chunk = token_chunk(B, N)
    C = cdiv(N, chunk)
    dx = torch.empty_like(h) if modulate else None
    dy = torch.empty_like(h) if residual else None
    partial = h.new_zeros((2 * modulate + residual, B, C, D), dtype=acc_dtype(h.dtype))
    if B * C * D > 0:
        BLOCK_D = row_block(D)
        _adaln_bwd_kernel[(B * C,)](
            grad_out, grad_out if grad_h is None else grad_h, h, y, *(t if t is not None else h for t in (gate, scale)),
            mean, rstd, *(t if t is not None else h for t in (dx, dy)), partial,
            N, D, C, chunk, *_strides(gate), *_strides(scale), B * C * D,
            BLOCK_D=BLOCK_D, ONE_BLOCK=D <= BLOCK_D, RESIDUAL=residual, MODULATE=modulate,
            HAS_GH=grad_h is not None, GATE_PLANE=2 * modulate, ACC=tl_acc(h.dtype), num_warps=num_warps(BLOCK_D),
        )
    return dx, dy, [p.sum(1).to(h.dtype) for p in partial]


@torch.library.custom_op("mdt_kernels::adaln_modulate_triton", mutates_args=())
def adaln_modulate_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, out, mean, rstd = _forward(x, None, None, shift, scale, eps)
    return out, mean, rstd


@torch.library.custom_op("mdt_kernels::adaln_modulate_backward_triton", mutates_args=())
def adaln_modulate_backward_triton(
    grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, _, (dshift, dscale) = _backward(grad, None, x, None, None, scale, mean, rstd)
    return dx, dshift, dscale


@torch.library.custom_op("mdt_kernels::gated_residual_triton", mutates_args=())
def gated_residual_triton(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _forward(x, gate, y, None, None, 0.0)[0]


@torch.library.custom_op("mdt_kernels::gated_residual_backward_triton", mutates_args=())
def gated_residual_backward_triton(
    grad: torch.Tensor, gate: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _, dy, (dgate,) = _backward(grad, None, y, y, gate, None, None, None)
    return dgate, dy


@torch.library.custom_op("mdt_kernels::residual_adaln_modulate_triton", mutates_args=())
def residual_adaln_modulate_triton(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, gate, y, shift, scale, eps)


@torch.library.custom_op("mdt_kernels::residual_adaln_modulate_backward_triton", mutates_args=())
def residual_adaln_modulate_backward_triton(
    grad_h: torch.Tensor | None, grad_out: torch.Tensor, h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor,
    scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dy, (dshift, dscale, dgate) = _backward(grad_out, grad_h, h, y, gate, scale, mean, rstd)
    return dx, dgate, dy, dshift, dscale


# ---------------------------------------------------------------------------------------------------
# Checks and registration: fake kernels and autograd, shared by each C++ op and its Triton twin


def check(x, gate=None, y=None, shift=None, scale=None, *, x_name="x") -> None:
    """x (B, N, D) float; gate, shift, scale (B, D), any strides; y (B, N, D) like x; one dtype and device.
    The absent tensors (None) are not checked. The public functions' arguments and the fake kernels'."""
    _checks.check_tensor(x_name, x, 3, "(B, N, D)")
    _checks.check_float(x_name, x)
    B, N, D = x.shape
    named = {n: t for n, t in (("gate", gate), ("y", y), ("shift", shift), ("scale", scale)) if t is not None}
    for name, t in named.items():
        if name == "y":
            _checks.check_tensor(name, t, 3, "(B, N, D)")
            _checks.check_shape(name, t, (B, N, D), f"(B, N, D) like {x_name}")
        else:
            _checks.check_tensor(name, t, 2, "(B, D)")
            _checks.check_shape(name, t, (B, D), "(B, D)")
    _checks.check_same("device", **{x_name: x}, **named)
    _checks.check_same("dtype", **{x_name: x}, **named)


def check_eps(eps) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, torch.SymFloat)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    _checks.require(eps >= 0, lambda: f"eps must be >= 0, got {eps}")


def _check_backward(x, grads=(), gate=None, y=None, scale=None, stats=(), x_name="x") -> None:
    """A backward's inputs: check's, plus gradients (name, tensor or None) shaped like x and the (B, N) row
    statistics (name, tensor) in the accumulation dtype."""
    check(x, gate, y, None, scale, x_name=x_name)
    for name, g in grads:
        if g is not None:
            _checks.check_shape(name, g, tuple(x.shape), f"(B, N, D) like {x_name}")
            _checks.check_dtype(name, g, x.dtype)
    for name, s in stats:
        _checks.check_shape(name, s, tuple(x.shape[:2]), "(B, N)")
        _checks.check_dtype(name, s, acc_dtype(x.dtype))


def _stats(x):
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x.dtype))
    return stats, torch.empty_like(stats)


def _fake_adaln_forward(x, shift, scale, eps):
    check(x, shift=shift, scale=scale)
    check_eps(eps)
    return x.new_empty(x.shape), *_stats(x)


def _fake_adaln_backward(grad, x, scale, mean, rstd):
    _check_backward(x, [("grad", grad)], scale=scale, stats=[("mean", mean), ("rstd", rstd)])
    B, _, D = x.shape
    return x.new_empty(x.shape), x.new_empty((B, D)), x.new_empty((B, D))


def _setup_adaln(ctx, inputs, output):
    x, _, scale, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (unused) gradients
    ctx.save_for_backward(x, scale, mean, rstd)


def _backward_adaln(backward_op, ctx, grad, _grad_mean, _grad_rstd):
    if grad is None:  # out's gradient is undefined (grads are not materialised)
        return None, None, None, None
    dx, dshift, dscale = backward_op(grad, *ctx.saved_tensors)
    return dx, dshift, dscale, None


def _fake_gated_forward(x, gate, y):
    check(x, gate, y)
    return x.new_empty(x.shape)


def _fake_gated_backward(grad, gate, y):
    _check_backward(y, [("grad", grad)], gate=gate, x_name="y")
    return y.new_empty((y.shape[0], y.shape[2])), y.new_empty(y.shape)


def _setup_gated(ctx, inputs, output):
    _, gate, y = inputs
    ctx.save_for_backward(gate, y)


def _backward_gated(backward_op, ctx, grad):
    if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        return grad, None, None
    dgate, dy = backward_op(grad, *ctx.saved_tensors)
    return grad, dgate, dy  # d(out)/dx is the identity


def _fake_residual_forward(x, gate, y, shift, scale, eps):
    check(x, gate, y, shift, scale)
    check_eps(eps)
    return x.new_empty(x.shape), x.new_empty(x.shape), *_stats(x)


def _fake_residual_backward(grad_h, grad_out, h, y, gate, scale, mean, rstd):
    _check_backward(h, [("grad_h", grad_h), ("grad_out", grad_out)], gate=gate, y=y, scale=scale,
                    stats=[("mean", mean), ("rstd", rstd)], x_name="h")
    B, _, D = h.shape
    return h.new_empty(h.shape), h.new_empty((B, D)), h.new_empty(h.shape), h.new_empty((B, D)), h.new_empty((B, D))


def _setup_residual(ctx, inputs, output):
    _, gate, y, _, scale, _ = inputs
    h, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # an unused h passes grad_h=None: no zero tensor to read
    ctx.save_for_backward(h, y, gate, scale, mean, rstd)


def _backward_residual(backward_op, ctx, grad_h, grad_out, _grad_mean, _grad_rstd):
    if grad_h is None and grad_out is None:
        return None, None, None, None, None, None
    h, y, gate, scale, mean, rstd = ctx.saved_tensors
    if grad_out is None:  # out unused: only the residual gradient flows
        grad_out = torch.zeros_like(h)
    dx, dgate, dy, dshift, dscale = backward_op(grad_h, grad_out, h, y, gate, scale, mean, rstd)
    return dx, dgate, dy, dshift, dscale, None


register_op("adaln_modulate", fake_forward=_fake_adaln_forward, fake_backward=_fake_adaln_backward,
            setup_context=_setup_adaln, backward=_backward_adaln)
register_op("gated_residual", fake_forward=_fake_gated_forward, fake_backward=_fake_gated_backward,
            setup_context=_setup_gated, backward=_backward_gated)
register_op("residual_adaln_modulate", fake_forward=_fake_residual_forward, fake_backward=_fake_residual_backward,
            setup_context=_setup_residual, backward=_backward_residual)


def _compiled_adaln(ops, x, shift, scale, eps):
    return ops.adaln_modulate(x, shift, scale, eps)[0]


def _compiled_gated(ops, x, gate, y):
    return ops.gated_residual(x, gate, y)


def _compiled_residual(ops, x, gate, y, shift, scale, eps):
    h, out, _, _ = ops.residual_adaln_modulate(x, gate, y, shift, scale, eps)
    return h, out


# Under no_grad / inference_mode the CPU backend runs the inference forms, which keep no mean and rstd
# (gated_residual keeps nothing for its backward: it has one form).
_adaln_inference = register_inference("adaln_modulate", lambda *a: _fake_adaln_forward(*a)[0])
_residual_inference = register_inference("residual_adaln_modulate", lambda *a: tuple(_fake_residual_forward(*a)[:2]))

# ---------------------------------------------------------------------------------------------------
# The public functions


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
    check(x, shift=shift, scale=scale)
    check_eps(eps)
    _, run = _dispatch.implementation("adaln_modulate", x.device, x, shift, scale)
    return run(x, shift, scale, float(eps))


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
    check(x, gate, y)
    _, run = _dispatch.implementation("gated_residual", x.device, x, gate, y)
    return run(x, gate, y)


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
    check(x, gate, y, shift, scale)
    check_eps(eps)
    _, run = _dispatch.implementation("residual_adaln_modulate", x.device, x, gate, y, shift, scale)
    return run(x, gate, y, shift, scale, float(eps))


# ---------------------------------------------------------------------------------------------------
# Declarations: the three ops, their implementations and example calls (gate, shift, scale as chunk views)


def _examples(s: Sizes, dtype, mods: int, takes_y: bool) -> list[Example]:
    x, y = torch.randn(s.B, s.N, s.D).to(dtype), torch.randn(s.B, s.N, s.D).to(dtype)
    rows = example_rows(s.B, s.D, mods, dtype)
    args = (x, rows[0], y, *rows[1:]) if takes_y else (x, *rows)
    return [Example(args, grad=tuple(range(len(args))))]


def _declare(name, function, reference, compiled, triton, inference=None, mods=2, takes_y=False):
    ops = torch.ops.mdt_kernels
    declare(Op(name, function, compiled=compiled, inference=inference,
               examples=functools.partial(_examples, mods=mods, takes_y=takes_y),
               impls={"reference": reference, "cpu": functools.partial(compiled, ops),
                      "cuda": functools.partial(compiled, ops), "triton": triton}))


_declare("adaln_modulate", adaln_modulate, adaln_modulate_ref, _compiled_adaln,
         lambda *a: adaln_modulate_triton(*a)[0], _adaln_inference)
_declare("gated_residual", gated_residual, gated_residual_ref, _compiled_gated, gated_residual_triton, mods=1,
         takes_y=True)
_declare("residual_adaln_modulate", residual_adaln_modulate, residual_adaln_modulate_ref, _compiled_residual,
         lambda *a: tuple(residual_adaln_modulate_triton(*a)[:2]), _residual_inference, mods=3, takes_y=True)
