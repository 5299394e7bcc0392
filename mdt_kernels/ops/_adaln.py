"""Shared by the three adaLN ops (adaln_modulate, gated_residual, residual_adaln_modulate): checks of the
(B,D) modulation tensors and the Triton launch parameters (the accumulation dtype is _triton.acc_dtype)."""

from __future__ import annotations

import torch

from .. import _checks
from .._triton import block_size, cdiv, jit, tl

# Triton programs walk a row in blocks of at most MAX_BLOCK_D elements. Rows that fit in one block keep
# the per-sample partial sums of the backward in registers; longer rows accumulate them in the
# program's own slot of the partial buffer (read-modify-write by one program: still deterministic).
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


def check_tokens(name: str, t) -> None:
    _checks.check_tensor(name, t, 3, "(B, N, D)")
    _checks.check_float(name, t)


def check_mod(name: str, t, x: torch.Tensor) -> None:
    """A (B,D) modulation tensor (shift, scale or gate) for tokens x (B,N,D); any strides."""
    _checks.check_tensor(name, t, 2, "(B, D)")
    _checks.check_shape(name, t, (x.shape[0], x.shape[2]), "(B, D)")


def check_like(name: str, t, x: torch.Tensor) -> None:
    _checks.check_tensor(name, t, 3, "(B, N, D)")
    _checks.check_shape(name, t, tuple(x.shape), "(B, N, D) like x")


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return float(eps)


@jit
def modulate_grad_row(x_row, g_row, sc_row, sc_sd, m, rs, D, ps_ptr, pc_ptr, acc_s, acc_c,
                      BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Backward of LayerNorm + modulate, first pass over one row (xhat = (x - m) * rs, a = 1 + scale,
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
