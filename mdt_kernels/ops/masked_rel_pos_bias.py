"""masked_rel_pos_bias: the relative-position bias of MDT's masked encoder, read straight from the table.

MDT expands the (R,H) table to the full (H,N,N) bias, repeats it over the batch to (B,H,N,N) and
gathers rows then columns with repeated int64 indices, in every encoder block of every masked pass.
Here each output element is one table read: for tokens p, q of the G x G grid (row-major),
    idx(p, q) = (r_p - r_q + G - 1) * (2G - 1) + (c_p - c_q + G - 1)
and out[b, h, i, j] = table[idx(ids_keep[b, i], ids_keep[b, j]), h]. Backward scatters the gradient
back into the table (fp32 accumulation; deterministic on CPU).
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


def relative_position_index(grid_size: int, device=None) -> torch.Tensor:
    """(N, N) int64 index into the table for the full grid (BEiT/MDT ``relative_position_index``)."""
    r, c = torch.meshgrid(torch.arange(grid_size, device=device), torch.arange(grid_size, device=device), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    return (r[:, None] - r[None, :] + grid_size - 1) * (2 * grid_size - 1) + (c[:, None] - c[None, :] + grid_size - 1)


def masked_rel_pos_bias_ref(table, grid_size, ids_keep=None):
    """Plain PyTorch: index the table with the (B,K,K) relative indices of the kept tokens."""
    index = relative_position_index(grid_size, table.device)
    if ids_keep is None:
        return table[index].permute(2, 0, 1)  # (H, N, N)
    idx = index[ids_keep.unsqueeze(-1), ids_keep.unsqueeze(-2)]  # (B, K, K)
    return table[idx].permute(0, 3, 1, 2)  # (B, H, K, K)


# ---------------------------------------------------------------------------------------------------
# Triton kernels: one program per (b, h, i) row and block of columns j.


@jit
def _rel_bias_row(ids_ptr, H, K, G, BLOCK_J: tl.constexpr):
    """Row (b,h,i) of this program, its column block j, the mask, and the table rows idx(p_i, q_j)."""
    row = tl.program_id(0).to(tl.int64)  # (b * H + h) * K + i
    i = row % K
    b = row // K // H
    js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    m = js < K
    p = tl.load(ids_ptr + b * K + i)
    q = tl.load(ids_ptr + b * K + js, mask=m, other=0)
    idx = (p // G - q // G + G - 1) * (2 * G - 1) + (p % G - q % G + G - 1)
    return row, row // K % H, js, m, idx


@jit
def _rel_bias_fwd_kernel(table_ptr, ids_ptr, out_ptr, H, K, G, BLOCK_J: tl.constexpr):
    row, h, js, m, idx = _rel_bias_row(ids_ptr, H, K, G, BLOCK_J)
    tl.store(out_ptr + row * K + js, tl.load(table_ptr + idx * H + h, mask=m), mask=m)


@jit
def _rel_bias_bwd_kernel(g_ptr, ids_ptr, dtable_ptr, H, K, G, BLOCK_J: tl.constexpr):
    # dtable is zeroed fp32 (fp64 for fp64); atomics accumulate (order, and so last bits, vary on GPU).
    row, h, js, m, idx = _rel_bias_row(ids_ptr, H, K, G, BLOCK_J)
    g = tl.load(g_ptr + row * K + js, mask=m).to(dtable_ptr.dtype.element_ty)
    tl.atomic_add(dtable_ptr + idx * H + h, g, mask=m)


@torch.library.custom_op("mdt_kernels::masked_rel_pos_bias_triton", mutates_args=())
def masked_rel_pos_bias_triton(table: torch.Tensor, grid_size: int, ids_keep: torch.Tensor) -> torch.Tensor:
    table, ids = table.contiguous(), ids_keep.contiguous()
    (B, K), H = ids.shape, table.shape[1]
    out = table.new_empty((B, H, K, K))
    if out.numel() > 0:
        BLOCK_J = block_size(K)
        _rel_bias_fwd_kernel[(B * H * K, cdiv(K, BLOCK_J))](table, ids, out, H, K, grid_size, BLOCK_J=BLOCK_J)
    return out


@torch.library.custom_op("mdt_kernels::masked_rel_pos_bias_backward_triton", mutates_args=())
def masked_rel_pos_bias_backward_triton(grad: torch.Tensor, ids_keep: torch.Tensor, grid_size: int,
                                        num_rel: int) -> torch.Tensor:
    grad, ids = grad.contiguous(), ids_keep.contiguous()
    B, H, K, _ = grad.shape
    d_table = grad.new_zeros((num_rel, H), dtype=acc_dtype(grad.dtype))
    if grad.numel() > 0:
        BLOCK_J = block_size(K)
        _rel_bias_bwd_kernel[(B * H * K, cdiv(K, BLOCK_J))](grad, ids, d_table, H, K, grid_size, BLOCK_J=BLOCK_J)
    return d_table.to(grad.dtype)


# ---------------------------------------------------------------------------------------------------
# Checks and registration: fake kernels and autograd, shared by the C++/CUDA op and its Triton twin


def check_table(table, grid_size, heads=None) -> None:
    """table (R, H) float with R >= (2G-1)^2 rows for grid_size G >= 1; heads, when given, its H (also
    rel_pos_attention's)."""
    _checks.check_tensor("table", table, 2, "(R, H)")
    _checks.check_float("table", table)
    _checks.check_int("grid_size", grid_size, at_least=1)
    need = (2 * grid_size - 1) ** 2
    _checks.require(table.shape[0] >= need, lambda: f"table has {table.shape[0]} rows, fewer than "
                       f"(2*grid_size-1)^2 = {need} needed for grid_size {grid_size}")
    if heads is not None:
        _checks.require(table.shape[1] == heads, lambda: f"table has {table.shape[1]} heads but qkv has {heads}")


def check(table, grid_size, ids_keep):
    """The table, grid_size and (B, K) int64 ids_keep on the table's device: the public function's arguments
    (the full grid as ids_keep = all positions) and the fake kernel's."""
    check_table(table, grid_size)
    _checks.check_ids("ids_keep", ids_keep)
    _checks.check_same("device", table=table, ids_keep=ids_keep)


def _fake_forward(table, grid_size, ids_keep):
    check(table, grid_size, ids_keep)
    B, K = ids_keep.shape
    return table.new_empty((B, table.shape[1], K, K))


def _fake_backward(grad, ids_keep, grid_size, num_rel):
    _checks.check_tensor("grad", grad, 4, "(B, H, K, K)")
    _checks.check_float("grad", grad)
    B, H, K, _ = grad.shape
    _checks.check_shape("grad", grad, (B, H, K, K), "(B, H, K, K)")
    _checks.check_ids("ids_keep", ids_keep, B, K, tokens_of="grad")
    _checks.check_int("grid_size", grid_size, at_least=1)
    _checks.require(num_rel >= (2 * grid_size - 1) ** 2, lambda: f"num_rel={num_rel} is fewer than "
                       f"(2*grid_size-1)^2 = {(2 * grid_size - 1) ** 2} for grid_size {grid_size}")
    return grad.new_empty((num_rel, grad.shape[1]))


def _setup_context(ctx, inputs, output):
    table, grid_size, ids_keep = inputs
    ctx.save_for_backward(ids_keep)
    ctx.grid_size, ctx.num_rel = grid_size, table.shape[0]


def _backward(backward_op, ctx, grad):
    (ids_keep,) = ctx.saved_tensors
    return backward_op(grad, ids_keep, ctx.grid_size, ctx.num_rel), None, None


register_op("masked_rel_pos_bias", fake_forward=_fake_forward, fake_backward=_fake_backward,
            setup_context=_setup_context, backward=_backward)


def _compiled(ops, table, grid_size, ids_keep):
    return ops.masked_rel_pos_bias(table, grid_size, ids_keep)


# ---------------------------------------------------------------------------------------------------
# Public function


def masked_rel_pos_bias(table: torch.Tensor, grid_size: int, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
    """Relative-position bias of a G x G token grid, for all tokens or for each sample's kept tokens.

    Args:
        table: (R, H) float32/float16/bfloat16/float64 bias table, R >= (2G-1)^2 (MDT's has 3 extra
            rows, unused).
        grid_size: G; tokens are the G*G grid positions in row-major order.
        ids_keep: optional (B, K) integer token positions in [0, G*G).
    Returns:
        (H, N, N) with N = G*G when ids_keep is None, else (B, H, K, K) with
        ``out[b, h, i, j] = table[idx(ids_keep[b, i], ids_keep[b, j]), h]``. Differentiable in table.
    """
    check_table(table, grid_size)
    full = ids_keep is None  # the full grid is the all-tokens-kept case of the same kernel
    if full:
        ids_keep = torch.arange(grid_size * grid_size, device=table.device).unsqueeze(0)
    ids_keep = _checks.as_ids("ids_keep", ids_keep)
    check(table, grid_size, ids_keep)
    backend, run = _dispatch.implementation("masked_rel_pos_bias", table.device, table)
    if backend != "cpu" and not full:  # the C++ CPU kernel checks the id range itself
        _checks.check_id_values("ids_keep", ids_keep, grid_size * grid_size)
    if backend == "reference":
        return masked_rel_pos_bias_ref(table, grid_size, None if full else ids_keep)
    out = run(table, grid_size, ids_keep)
    return out.squeeze(0) if full else out


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    """On a grid (s.G > 0): the kept tokens, and the full grid when every token is kept."""
    if not s.G:
        return []
    table = torch.randn((2 * s.G - 1) ** 2 + 3, s.H).to(dtype)  # MDT's table has 3 unused extra rows
    calls = [Example((table, s.G, example_ids(s.B, s.K, s.G * s.G)), grad=(0,))]
    return calls + ([Example((table.clone(), s.G), grad=(0,))] if s.K == s.G * s.G else [])


declare(Op("masked_rel_pos_bias", masked_rel_pos_bias, compiled=_compiled, examples=_examples, impls={
    "reference": masked_rel_pos_bias_ref,
    "cpu": functools.partial(_compiled, torch.ops.mdt_kernels),
    "cuda": functools.partial(_compiled, torch.ops.mdt_kernels),
    "triton": masked_rel_pos_bias_triton,
}))
