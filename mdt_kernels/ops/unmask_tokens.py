"""unmask_tokens: the side-interpolater input of MDT's masked pass in one pass over memory.

MDT builds it as ``cat([x_kept, mask_token.repeat(B, N-K, 1)])``, a gather with a repeated int64
(B,N,D) ``ids_restore`` index, then ``+ decoder_pos_embed``: three passes over (B,N,D) plus the index.
Here every output row is written once: x_kept[b,k] at position ids_keep[b,k], mask_token elsewhere,
plus pos_embed[n]. Backward reads the gradient once: kept rows go to d_x_kept, the others are summed
into d_mask_token, and all rows are summed over the batch into d_pos_embed.
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


def unmask_tokens_ref(x_kept, ids_keep, mask_token, num_tokens, pos_embed=None):
    """Plain PyTorch: a (B,N,D) canvas of mask tokens with the kept rows scattered in, plus pos_embed."""
    B, K, D = x_kept.shape
    canvas = mask_token.reshape(1, 1, D).expand(B, num_tokens, D)
    out = canvas.scatter(1, ids_keep.unsqueeze(-1).expand(B, K, D), x_kept)
    return out if pos_embed is None else out + pos_embed.reshape(1, num_tokens, D)


# ---------------------------------------------------------------------------------------------------
# Triton kernels. inv[b, n] = k if ids_keep[b, k] == n else -1 (built with one torch scatter).


@jit
def _unmask_fwd_kernel(xk_ptr, inv_ptr, mask_ptr, pos_ptr, out_ptr, N, K, D, HAS_POS: tl.constexpr,
                       FP64: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * N + n
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = offs < D
    k = tl.load(inv_ptr + row) + tl.zeros((BLOCK_D,), dtype=tl.int64)  # as a vector, for masks
    kept = k >= 0
    v_kept = tl.load(xk_ptr + (row // N * K + k) * D + offs, mask=m & kept)
    v_mask = tl.load(mask_ptr + offs, mask=m & (k < 0))
    v = tl.where(kept, v_kept, v_mask)
    if HAS_POS:
        pe = tl.load(pos_ptr + row % N * D + offs, mask=m)
        if FP64:
            v = v + pe
        else:
            v = (v.to(tl.float32) + pe.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * D + offs, v, mask=m)


@jit
def _unmask_bwd_kernel(g_ptr, inv_ptr, dxk_ptr, mask_part_ptr, dpos_ptr, B, N, K, D, HAS_POS: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    # One program per (position n, D block), looping over the batch in order: deterministic sums.
    n = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = offs < D
    acc_t = mask_part_ptr.dtype.element_ty  # fp32, fp64 for fp64 data
    mask_acc = tl.zeros((BLOCK_D,), dtype=acc_t)
    pos_acc = tl.zeros((BLOCK_D,), dtype=acc_t)
    for b in range(0, B):
        row = b * N + n
        g = tl.load(g_ptr + row * D + offs, mask=m)
        gf = g.to(acc_t)
        k = tl.load(inv_ptr + row) + tl.zeros((BLOCK_D,), dtype=tl.int64)
        tl.store(dxk_ptr + (b * K + k) * D + offs, g, mask=m & (k >= 0))
        mask_acc += tl.where(k < 0, gf, 0.0)
        pos_acc += gf
    tl.store(mask_part_ptr + n * D + offs, mask_acc, mask=m)
    if HAS_POS:
        tl.store(dpos_ptr + n * D + offs, pos_acc.to(dpos_ptr.dtype.element_ty), mask=m)


def _inverse_map(ids_keep: torch.Tensor, num_tokens: int) -> torch.Tensor:
    B, K = ids_keep.shape
    inv = torch.full((B, num_tokens), -1, dtype=torch.int64, device=ids_keep.device)
    return inv.scatter_(1, ids_keep, torch.arange(K, device=ids_keep.device).expand(B, K))


@torch.library.custom_op("mdt_kernels::unmask_tokens_triton", mutates_args=())
def unmask_tokens_triton(x_kept: torch.Tensor, ids_keep: torch.Tensor, mask_token: torch.Tensor, num_tokens: int,
                         pos_embed: torch.Tensor | None) -> torch.Tensor:
    xk, mask = x_kept.contiguous(), mask_token.contiguous()
    (B, K, D), N = xk.shape, num_tokens
    out = xk.new_empty((B, N, D))
    if out.numel() > 0:
        pos = pos_embed.contiguous() if pos_embed is not None else mask  # dummy pointer when absent
        BLOCK_D = block_size(D)
        _unmask_fwd_kernel[(B * N, cdiv(D, BLOCK_D))](
            xk, _inverse_map(ids_keep, N), mask, pos, out, N, K, D, HAS_POS=pos_embed is not None,
            FP64=xk.dtype == torch.float64, BLOCK_D=BLOCK_D
        )
    return out


@torch.library.custom_op("mdt_kernels::unmask_tokens_backward_triton", mutates_args=())
def unmask_tokens_backward_triton(grad: torch.Tensor, ids_keep: torch.Tensor,
                                  has_pos: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad = grad.contiguous()
    (B, N, D), K = grad.shape, ids_keep.shape[1]
    d_xk = grad.new_empty((B, K, D))
    d_pos = grad.new_empty((N if has_pos else 0, D))
    mask_part = grad.new_zeros((N, D), dtype=acc_dtype(grad.dtype))
    if N * D > 0:  # also for B = 0: the programs then write d_pos = 0 (the batch loop is empty)
        BLOCK_D = block_size(D)
        _unmask_bwd_kernel[(N, cdiv(D, BLOCK_D))](
            grad, _inverse_map(ids_keep, N), d_xk, mask_part, d_pos, B, N, K, D, HAS_POS=has_pos, BLOCK_D=BLOCK_D
        )
    return d_xk, mask_part.sum(0).to(grad.dtype), d_pos


# ---------------------------------------------------------------------------------------------------
# Checks and registration: fake kernels and autograd, shared by the C++/CUDA op and its Triton twin


def check(x_kept, ids_keep, mask_token, num_tokens, pos_embed):
    """x_kept (B, K, D) float, ids_keep (B, K) int64, K <= num_tokens, mask_token (D,) and pos_embed (N, D)
    or None of x_kept's dtype, one device: the public function's arguments (reshaped) and the fake kernel's."""
    _checks.check_tensor("x_kept", x_kept, 3, "(B, K, D)")
    _checks.check_float("x_kept", x_kept)
    B, K, D = x_kept.shape
    _checks.check_int("num_tokens", num_tokens)
    _checks.require(K <= num_tokens, lambda: f"num_tokens={num_tokens} is smaller than the {K} kept tokens of "
                                                "x_kept")
    _checks.check_ids("ids_keep", ids_keep, B, K, tokens_of="x_kept")
    _checks.check_shape("mask_token", mask_token, (D,), "(D,)")
    if pos_embed is not None:
        _checks.check_shape("pos_embed", pos_embed, (num_tokens, D), "(N, D)")
    _checks.check_same("device", x_kept=x_kept, ids_keep=ids_keep, mask_token=mask_token, pos_embed=pos_embed)
    _checks.check_same("dtype", x_kept=x_kept, mask_token=mask_token, pos_embed=pos_embed)


def _fake_forward(x_kept, ids_keep, mask_token, num_tokens, pos_embed):
    check(x_kept, ids_keep, mask_token, num_tokens, pos_embed)
    return x_kept.new_empty((x_kept.shape[0], num_tokens, x_kept.shape[2]))


def _fake_backward(grad, ids_keep, has_pos):
    _checks.check_tensor("grad", grad, 3, "(B, N, D)")
    _checks.check_float("grad", grad)
    B, N, D = grad.shape
    _checks.check_ids("ids_keep", ids_keep, B)
    _checks.require(ids_keep.shape[1] <= N, lambda: f"ids_keep shape {tuple(ids_keep.shape)} does not match grad "
                                                       f"{tuple(grad.shape)}")
    return grad.new_empty((B, ids_keep.shape[1], D)), grad.new_empty((D,)), grad.new_empty((N if has_pos else 0, D))


def _setup_context(ctx, inputs, output):
    _, ids_keep, _, _, pos_embed = inputs
    ctx.save_for_backward(ids_keep)
    ctx.has_pos = pos_embed is not None


def _backward(backward_op, ctx, grad):
    (ids_keep,) = ctx.saved_tensors
    d_xk, d_mask, d_pos = backward_op(grad, ids_keep, ctx.has_pos)
    return d_xk, None, d_mask, None, d_pos if ctx.has_pos else None


register_op("unmask_tokens", fake_forward=_fake_forward, fake_backward=_fake_backward, setup_context=_setup_context,
            backward=_backward)


def _compiled(ops, x_kept, ids_keep, mask_token, num_tokens, pos_embed):
    return ops.unmask_tokens(x_kept, ids_keep, mask_token, num_tokens, pos_embed)


# ---------------------------------------------------------------------------------------------------
# Public function


def unmask_tokens(x_kept: torch.Tensor, ids_keep: torch.Tensor, mask_token: torch.Tensor, num_tokens: int,
                  pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """Puts the kept tokens back on the full token grid, fills the rest with the mask token.

    Args:
        x_kept: (B, K, D) float32/float16/bfloat16/float64 tokens of the kept positions.
        ids_keep: (B, K) integer positions in [0, num_tokens), distinct within each row.
        mask_token: (D,) (or (1, 1, D), as MDT stores it), same dtype and device as x_kept.
        num_tokens: N >= K, the length of the full sequence.
        pos_embed: optional (N, D) or (1, N, D) added to every position (MDT's decoder_pos_embed).
    Returns:
        (B, N, D): ``out[b, ids_keep[b, k]] = x_kept[b, k]``, every other position ``mask_token``,
        plus ``pos_embed``. Differentiable in x_kept, mask_token and pos_embed.
    """
    # mask_token and pos_embed may have a leading unit dimension: checked here, before they are reshaped.
    _checks.check_tensor("x_kept", x_kept, 3, "(B, K, D)")
    _, K, D = x_kept.shape
    _checks.check_int("num_tokens", num_tokens)
    if num_tokens < K:
        raise ValueError(f"num_tokens={num_tokens} is smaller than the {K} kept tokens of x_kept")
    if not isinstance(mask_token, torch.Tensor) or mask_token.dim() < 1 or mask_token.numel() != D:
        shape = tuple(mask_token.shape) if isinstance(mask_token, torch.Tensor) else type(mask_token).__name__
        raise ValueError(f"mask_token must hold D={D} values, shape (D,) or (1, 1, D); got {shape}")
    if pos_embed is not None and (
        not isinstance(pos_embed, torch.Tensor)
        or pos_embed.shape[-2:] != (num_tokens, D)
        or pos_embed.numel() != num_tokens * D
    ):
        shape = tuple(pos_embed.shape) if isinstance(pos_embed, torch.Tensor) else type(pos_embed).__name__
        raise ValueError(f"pos_embed must have shape (N, D) = ({num_tokens}, {D}) or (1, N, D); got {shape}")
    ids_keep = _checks.as_ids("ids_keep", ids_keep)
    mask_token = mask_token.reshape(D)
    pos_embed = pos_embed.reshape(num_tokens, D) if pos_embed is not None else None
    check(x_kept, ids_keep, mask_token, num_tokens, pos_embed)
    backend, run = _dispatch.implementation("unmask_tokens", x_kept.device, x_kept, mask_token, pos_embed)
    if backend != "cpu":  # the C++ CPU kernel checks range and distinctness itself while building its inverse map
        _checks.check_id_values("ids_keep", ids_keep, num_tokens, distinct=True)
    return run(x_kept, ids_keep, mask_token, num_tokens, pos_embed)


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    """With and without pos_embed."""
    def args():
        return torch.randn(s.B, s.K, s.D).to(dtype), example_ids(s.B, s.K, s.N), torch.randn(s.D).to(dtype), s.N

    return [Example((*args(), torch.randn(s.N, s.D).to(dtype)), grad=(0, 2, 4)), Example(args(), grad=(0, 2))]


declare(Op("unmask_tokens", unmask_tokens, compiled=_compiled, examples=_examples, impls={
    "reference": unmask_tokens_ref,
    "cpu": functools.partial(_compiled, torch.ops.mdt_kernels),
    "cuda": functools.partial(_compiled, torch.ops.mdt_kernels),
    "triton": unmask_tokens_triton,
}))
