"""rel_pos_attention: self-attention with MDT's relative-position bias, on the packed qkv projection.

For each sample b and head h, with q, k, v the (K, Dh) slices of qkv (B, K, 3, H, Dh) and the bias of
``masked_rel_pos_bias`` (the kept tokens ids_keep of a G x G grid, or the whole grid):
    out[b, :, h] = softmax(q k^T * scale + bias[b, h]) v,         out (B, K, H, Dh).
MDT builds the bias tensor, splits and transposes q, k, v and runs attention on them, then transposes
the result back; eager CPU attention with a learned bias runs as separate matmul, add and softmax
passes. The CPU kernel does one (b, h) block at a time in cache (BLAS for the four products, one pass
for bias + softmax, one for the softmax backward and the table gradient) and reads and writes the
(B, K, 3, H, Dh) / (B, K, H, Dh) layouts of the surrounding linear layers directly. There is no CUDA
or Triton kernel yet: on GPUs MDT's attention runs in xformers / SDPA with the bias of
``masked_rel_pos_bias``, and ``auto`` picks the reference there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from ._register import register_op
from .masked_rel_pos_bias import masked_rel_pos_bias_ref

KERNELS = ("reference", "cpu")

# ---------------------------------------------------------------------------------------------------
# Reference


def rel_pos_attention_ref(qkv, table, grid_size, ids_keep=None, scale=None):
    """Plain PyTorch, as MDT runs it: the bias tensor, then scaled_dot_product_attention on q, k, v."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, K, Dh) each
    bias = masked_rel_pos_bias_ref(table, grid_size, ids_keep).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale).transpose(1, 2)  # (B, K, H, Dh)


# ---------------------------------------------------------------------------------------------------
# Registration: fake kernels and autograd of the C++ op


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(qkv, table, grid_size, ids_keep, scale):
    B, K, _, H, Dh = qkv.shape
    return qkv.new_empty((B, K, H, Dh)), qkv.new_empty((B, H, K, K), dtype=_acc(qkv.dtype))


def _fake_backward(grad_out, qkv, probs, ids_keep, grid_size, num_rel, scale):
    return qkv.new_empty(qkv.shape), probs.new_empty((num_rel, qkv.shape[3]))


def _setup_context(ctx, inputs, output):
    qkv, table, grid_size, ids_keep, scale = inputs
    _, probs = output
    ctx.mark_non_differentiable(probs)
    ctx.set_materialize_grads(False)  # else autograd fills a (B,H,K,K) zero gradient for probs every step
    ctx.save_for_backward(qkv, probs, ids_keep)
    ctx.grid_size, ctx.num_rel, ctx.scale, ctx.table_dtype = grid_size, table.shape[0], scale, table.dtype


def _backward(backward_op, ctx, grad_out, _grad_probs):
    if grad_out is None:  # out did not reach the loss
        return None, None, None, None, None
    qkv, probs, ids_keep = ctx.saved_tensors
    d_qkv, d_table = backward_op(grad_out, qkv, probs, ids_keep, ctx.grid_size, ctx.num_rel, ctx.scale)
    return d_qkv, d_table.to(ctx.table_dtype), None, None, None


register_op("rel_pos_attention", fake_forward=_fake_forward, fake_backward=_fake_backward,
            setup_context=_setup_context, backward=_backward, triton=False)

# ---------------------------------------------------------------------------------------------------
# Public function


def rel_pos_attention(qkv: torch.Tensor, table: torch.Tensor, grid_size: int, ids_keep: torch.Tensor | None = None,
                      scale: float | None = None) -> torch.Tensor:
    """Multi-head self-attention with MDT's learned relative-position bias.

    Args:
        qkv: (B, K, 3, H, Dh) float32/float16/bfloat16/float64, the qkv projection of K tokens viewed as
            (q, k, v) x heads (``nn.Linear(D, 3D)(x).view(B, K, 3, H, D // H)``); any strides.
        table: (R, H) relative-position bias table, R >= (2G-1)^2, any float dtype (used in qkv's).
        grid_size: G; tokens are positions of the G x G grid in row-major order.
        ids_keep: optional (B, K) grid positions of the K tokens; None means all G*G tokens in order.
        scale: factor of q k^T; default Dh ** -0.5.
    Returns:
        (B, K, H, Dh) in qkv's dtype (``.reshape(B, K, H * Dh)`` is free), with
        ``out[b, :, h] = softmax(q k^T * scale + masked_rel_pos_bias(table, G, ids_keep)[b, h]) v``.
        Differentiable in qkv and table.
    """
    _checks.check_tensor("qkv", qkv, 5, "(B, K, 3, H, Dh)")
    _checks.check_float("qkv", qkv)
    _checks.check_tensor("table", table, 2, "(R, H)")
    _checks.check_float("table", table)
    B, K, three, H, Dh = qkv.shape
    if three != 3:
        raise ValueError(f"qkv must have shape (B, K, 3, H, Dh), got {tuple(qkv.shape)}")
    if table.shape[1] != H:
        raise ValueError(f"table has {table.shape[1]} heads but qkv has {H}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, torch.SymInt)):
        raise TypeError(f"grid_size must be an int, got {type(grid_size).__name__}")
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    need = (2 * grid_size - 1) ** 2
    if table.shape[0] < need:
        raise ValueError(
            f"table has {table.shape[0]} rows, fewer than (2*grid_size-1)^2 = {need} needed for grid_size {grid_size}"
        )
    if scale is None:
        scale = Dh**-0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    ids_arg = ids_keep if isinstance(ids_keep, torch.Tensor) else None
    _checks.check_same("device", qkv=qkv, table=table, ids_keep=ids_arg)
    backend = _dispatch.resolve("rel_pos_attention", qkv.device, KERNELS)
    if ids_keep is None:
        if K != grid_size * grid_size:
            raise ValueError(f"without ids_keep qkv must hold all grid_size^2 = {grid_size ** 2} tokens, got K = {K}")
    else:  # the C++ CPU kernel checks the id range itself
        ids_keep = _checks.check_ids("ids_keep", ids_keep, B, grid_size * grid_size, values=backend != "cpu")
        if ids_keep.shape[1] != K:
            raise ValueError(f"ids_keep has {ids_keep.shape[1]} tokens per sample but qkv has K = {K}")
    if backend == "reference":
        return rel_pos_attention_ref(qkv, table, grid_size, ids_keep, float(scale))
    if ids_keep is None:  # the full grid is the all-tokens-kept case of the same kernel
        ids_keep = torch.arange(K, device=qkv.device).expand(B, K)
    out, _ = torch.ops.mdt_kernels.rel_pos_attention(qkv, table, grid_size, ids_keep, float(scale))
    return out
