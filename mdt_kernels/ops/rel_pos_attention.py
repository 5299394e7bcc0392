"""rel_pos_attention: self-attention with MDT's relative-position bias, on the packed qkv projection.

For each sample b and head h, with q, k, v the (K, Dh) slices of qkv (B, K, 3, H, Dh) and the bias of
``masked_rel_pos_bias`` (the kept tokens ids_keep of a G x G grid, or the whole grid):
    out[b, :, h] = softmax(q k^T * scale + bias[b, h]) v,         out (B, K, H, Dh).
MDT builds the bias tensor, splits and transposes q, k, v and runs attention on them, then transposes
the result back; eager CPU attention with a learned bias runs as separate matmul, add and softmax
passes. The CPU kernel does one (b, h) block at a time in cache (BLAS for the products, one pass for
bias + softmax, one for the softmax backward and the table gradient) and reads and writes the
(B, K, 3, H, Dh) / (B, K, H, Dh) layouts of the surrounding linear layers directly. As flash attention,
the forward saves each softmax row's max and reciprocal sum (B, H, K, 2) rather than the (B, H, K, K)
probabilities, which the backward recomputes. The Triton twin does the same per (b, h, block of query
rows), streaming over key blocks; it computes in fp32 (fp64 for fp64) rather than on fp16 tensor cores:
written to be right, not tuned for speed. There is no CUDA kernel: on CUDA tensors ``auto`` runs the
reference (SDPA with the bias of ``masked_rel_pos_bias``), and the model's attention xformers or SDPA;
the Triton kernel runs there when asked for (``use_backend("triton")``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import _checks, _dispatch
from .._registry import Example, Op, Sizes, declare, example_ids
from .._triton import acc_dtype, block_size, cdiv, jit, next_power_of_2, tl
from ._register import register_inference, register_op
from .masked_rel_pos_bias import check_table, masked_rel_pos_bias_ref

# ---------------------------------------------------------------------------------------------------
# Reference


def rel_pos_attention_ref(qkv, table, grid_size, ids_keep=None, scale=None):
    """Plain PyTorch, as MDT runs it: the bias tensor, then scaled_dot_product_attention on q, k, v."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, K, Dh) each
    bias = masked_rel_pos_bias_ref(table, grid_size, ids_keep).to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale).transpose(1, 2)  # (B, K, H, Dh)
    if out.numel() == 0:
        # SDPA gives an empty output no gradient for its mask, and so none for the table: join the bias to the
        # output, so that the table's gradient is zeros (DDP expects one from every rank, also one with B = 0).
        out = out + 0 * bias.sum()
    return out


# ---------------------------------------------------------------------------------------------------
# Triton kernels. Forward: one program per (b, h, block of query rows), two passes over key blocks (row
# max and softmax denominator online, saved for backward as the row's stats (max, 1 / denominator); then
# P and O = P v), so any K fits in registers. Backward, recomputing P from q, k, the bias and the stats:
# the same programs give delta = rowsum(P * dP), dS = P * (dP - delta), dq and the table gradient
# (atomics); a second kernel, one program per (b, h, block of key rows), gives dk and dv without atomics.
# fp16/bf16 are loaded as fp32 (fp64 stays fp64); "ieee" keeps fp32 dots off TF32.


@jit
def _load_rows(ptr, rows, rmask, s_row, d, s_d, dmask, dtype):
    """(rows, d) tile of a row-major matrix with strides (s_row, s_d), zero outside the masks, as dtype."""
    return tl.load(ptr + rows[:, None] * s_row + d[None, :] * s_d, mask=rmask[:, None] & dmask[None, :],
                   other=0.0).to(dtype)


@jit
def _rel_idx(pos_rows, ids_ptr, cols, cmask, G):
    """Table rows idx(p_i, q_j) for query grid positions pos_rows and the grid positions of key columns cols."""
    pos_cols = tl.load(ids_ptr + cols, mask=cmask, other=0)
    dr = pos_rows[:, None] // G - pos_cols[None, :] // G
    dc = pos_rows[:, None] % G - pos_cols[None, :] % G
    return (dr + G - 1) * (2 * G - 1) + (dc + G - 1)


@jit
def _scores(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale):
    """q k^T * scale + bias for one (query block, key block); columns past K are -inf."""
    idx = _rel_idx(pos_rows, ids_ptr, cols, cmask, G)
    bias = tl.load(table_ptr + idx * st_r + h * st_h, mask=cmask[None, :], other=0.0).to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias
    return tl.where(cmask[None, :], s, float("-inf"))


@jit
def _program_tile(qkv_ptr, H, K, Dh, s_b, s_h, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (b, h) pair and block of BLOCK token rows of this program (grid (B*H, cdiv(K, BLOCK))): returns
    (bh, b, h, rows, rmask, d, dmask, q_ptr), q_ptr at the head's q of sample b."""
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, BLOCK_D)
    return bh, b, h, rows, rows < K, d, d < Dh, qkv_ptr + b * s_b + h * s_h


@jit
def _probs(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale, m, inv):
    """P = exp(q k^T * scale + bias - m) * inv (row max m, reciprocal denominator inv) for one (query block,
    key block); 0 in columns past K."""
    s = _scores(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale)
    return tl.exp(s - m[:, None]) * inv[:, None]


@jit
def _attn_fwd_kernel(qkv_ptr, table_ptr, ids_ptr, scale_ptr, out_ptr, stats_ptr, H, K, Dh, G, s_b, s_k, s_3, s_h,
                     s_d, st_r, st_h, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bh, b, h, rows, rmask, d, dmask, q_ptr = _program_tile(qkv_ptr, H, K, Dh, s_b, s_h, BLOCK_M, BLOCK_D)
    acc = stats_ptr.dtype.element_ty
    ids_ptr += b * K
    scale = tl.load(scale_ptr)
    q = _load_rows(q_ptr, rows, rmask, s_k, d, s_d, dmask, acc)
    pos_rows = tl.load(ids_ptr + rows, mask=rmask, other=0)
    m = tl.full((BLOCK_M,), float("-inf"), acc)
    den = tl.zeros((BLOCK_M,), acc)
    for n0 in range(0, K, BLOCK_N):  # every key block has a column < K, so m is finite after the first
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < K
        k = _load_rows(q_ptr + s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        s = _scores(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale)
        m_new = tl.maximum(m, tl.max(s, 1))
        den = den * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m = m_new
    inv = 1.0 / den
    tl.store(stats_ptr + (bh * K + rows) * 2, m, mask=rmask)
    tl.store(stats_ptr + (bh * K + rows) * 2 + 1, inv, mask=rmask)
    o = tl.zeros((BLOCK_M, BLOCK_D), acc)
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < K
        k = _load_rows(q_ptr + s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        p = _probs(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale, m, inv)
        v = _load_rows(q_ptr + 2 * s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        o += tl.dot(p, v, input_precision="ieee")
    out = out_ptr + ((b * K + rows[:, None]) * H + h) * Dh + d[None, :]  # (B, K, H, Dh) contiguous
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


@jit
def _attn_bwd_dq_kernel(g_ptr, qkv_ptr, table_ptr, stats_ptr, ids_ptr, scale_ptr, dqkv_ptr, dtable_ptr, delta_ptr, H,
                        K, Dh, G, s_b, s_k, s_3, s_h, s_d, st_r, st_h, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    bh, b, h, rows, rmask, d, dmask, q_ptr = _program_tile(qkv_ptr, H, K, Dh, s_b, s_h, BLOCK_M, BLOCK_D)
    acc = stats_ptr.dtype.element_ty
    ids_ptr += b * K
    scale = tl.load(scale_ptr)
    pos_rows = tl.load(ids_ptr + rows, mask=rmask, other=0)
    q = _load_rows(q_ptr, rows, rmask, s_k, d, s_d, dmask, acc)
    m = tl.load(stats_ptr + (bh * K + rows) * 2, mask=rmask, other=0.0)
    inv = tl.load(stats_ptr + (bh * K + rows) * 2 + 1, mask=rmask, other=0.0)
    do = _load_rows(g_ptr + b * K * H * Dh + h * Dh, rows, rmask, H * Dh, d, 1, dmask, acc)  # grad (B, K, H, Dh)
    delta = tl.zeros((BLOCK_M,), acc)
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < K
        k = _load_rows(q_ptr + s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        v = _load_rows(q_ptr + 2 * s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        p = _probs(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale, m, inv)
        delta += tl.sum(p * tl.dot(do, tl.trans(v), input_precision="ieee"), 1)
    tl.store(delta_ptr + bh * K + rows, delta, mask=rmask)
    dq = tl.zeros((BLOCK_M, BLOCK_D), acc)
    for n0 in range(0, K, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < K
        k = _load_rows(q_ptr + s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        v = _load_rows(q_ptr + 2 * s_3, cols, cmask, s_k, d, s_d, dmask, acc)
        p = _probs(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale, m, inv)
        ds = p * (tl.dot(do, tl.trans(v), input_precision="ieee") - delta[:, None])
        # dtable is zeroed fp32 (fp64 for fp64); atomics accumulate (order, and so last bits, vary on GPU).
        idx = _rel_idx(pos_rows, ids_ptr, cols, cmask, G)
        tl.atomic_add(dtable_ptr + idx * H + h, ds, mask=rmask[:, None] & cmask[None, :])
        dq += tl.dot(ds, k, input_precision="ieee")
    dq_ptr = dqkv_ptr + ((b * K + rows[:, None]) * 3 * H + h) * Dh + d[None, :]  # (B, K, 3, H, Dh) contiguous
    tl.store(dq_ptr, (dq * scale).to(dqkv_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


@jit
def _attn_bwd_dkv_kernel(g_ptr, qkv_ptr, table_ptr, stats_ptr, ids_ptr, scale_ptr, dqkv_ptr, delta_ptr, H, K, Dh, G,
                         s_b, s_k, s_3, s_h, s_d, st_r, st_h, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    bh, b, h, cols, cmask, d, dmask, q_ptr = _program_tile(qkv_ptr, H, K, Dh, s_b, s_h, BLOCK_N, BLOCK_D)
    acc = stats_ptr.dtype.element_ty
    ids_ptr += b * K
    scale = tl.load(scale_ptr)
    k = _load_rows(q_ptr + s_3, cols, cmask, s_k, d, s_d, dmask, acc)
    v = _load_rows(q_ptr + 2 * s_3, cols, cmask, s_k, d, s_d, dmask, acc)
    dk = tl.zeros((BLOCK_N, BLOCK_D), acc)
    dv = tl.zeros((BLOCK_N, BLOCK_D), acc)
    for m0 in range(0, K, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        rmask = rows < K
        q = _load_rows(q_ptr, rows, rmask, s_k, d, s_d, dmask, acc)
        do = _load_rows(g_ptr + b * K * H * Dh + h * Dh, rows, rmask, H * Dh, d, 1, dmask, acc)
        delta = tl.load(delta_ptr + bh * K + rows, mask=rmask, other=0.0)
        m = tl.load(stats_ptr + (bh * K + rows) * 2, mask=rmask, other=0.0)
        inv = tl.load(stats_ptr + (bh * K + rows) * 2 + 1, mask=rmask, other=0.0)
        pos_rows = tl.load(ids_ptr + rows, mask=rmask, other=0)
        p_t = tl.trans(_probs(q, k, pos_rows, ids_ptr, cols, cmask, table_ptr, st_r, st_h, h, G, scale, m, inv))
        ds_t = p_t * (tl.dot(v, tl.trans(do), input_precision="ieee") - delta[None, :])
        dk += tl.dot(ds_t, q, input_precision="ieee")
        dv += tl.dot(p_t, do, input_precision="ieee")
    dk_ptr = dqkv_ptr + ((b * K + cols[:, None]) * 3 * H + H + h) * Dh + d[None, :]
    m2 = cmask[:, None] & dmask[None, :]
    tl.store(dk_ptr, (dk * scale).to(dqkv_ptr.dtype.element_ty), mask=m2)
    tl.store(dk_ptr + H * Dh, dv.to(dqkv_ptr.dtype.element_ty), mask=m2)


def _blocks(K: int, Dh: int) -> dict:
    return dict(BLOCK_M=block_size(K, 32), BLOCK_N=block_size(K, 64), BLOCK_D=max(16, next_power_of_2(Dh)))


def _bwd_stages(blocks: dict, itemsize: int) -> int:
    """Software-pipeline depth of the backward kernels: Triton's default 3 up to 256 B of a row of
    head features per tile, fewer beyond. The dq kernel's buffers grow with stages x BLOCK_D x itemsize: with
    3 stages, fp32 and BLOCK_D = 128 (XL/2's Dh = 72) it needs 172032 B of shared memory, over the A100's
    166912 B per block (benchmarks.triton_aot), and would not launch there; 2 stages need 98304 B."""
    row = blocks["BLOCK_D"] * itemsize
    return 3 if row <= 256 else 2 if row <= 512 else 1


@torch.library.custom_op("mdt_kernels::rel_pos_attention_triton", mutates_args=())
def rel_pos_attention_triton(qkv: torch.Tensor, table: torch.Tensor, grid_size: int, ids_keep: torch.Tensor,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    ids = ids_keep.contiguous()
    B, K, _, H, Dh = qkv.shape
    acc = acc_dtype(qkv.dtype)
    out = qkv.new_empty((B, K, H, Dh))
    stats = qkv.new_empty((B, H, K, 2), dtype=acc)
    if out.numel() > 0:
        blocks = _blocks(K, Dh)
        scale_t = torch.full((), scale, dtype=acc, device=qkv.device)  # a float argument would be fp32
        _attn_fwd_kernel[(B * H, cdiv(K, blocks["BLOCK_M"]))](
            qkv, table, ids, scale_t, out, stats, H, K, Dh, grid_size, *qkv.stride(), *table.stride(), **blocks)
    return out, stats


@torch.library.custom_op("mdt_kernels::rel_pos_attention_backward_triton", mutates_args=())
def rel_pos_attention_backward_triton(grad_out: torch.Tensor, qkv: torch.Tensor, table: torch.Tensor,
                                      stats: torch.Tensor, ids_keep: torch.Tensor, grid_size: int,
                                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    grad, stats, ids = grad_out.contiguous(), stats.contiguous(), ids_keep.contiguous()
    B, K, _, H, Dh = qkv.shape
    d_qkv = qkv.new_empty((B, K, 3, H, Dh))
    d_table = stats.new_zeros((table.shape[0], H))
    if d_qkv.numel() > 0:
        blocks = _blocks(K, Dh)
        scale_t = torch.full((), scale, dtype=stats.dtype, device=qkv.device)
        delta = stats.new_empty((B, H, K))
        stages = _bwd_stages(blocks, qkv.element_size())
        _attn_bwd_dq_kernel[(B * H, cdiv(K, blocks["BLOCK_M"]))](
            grad, qkv, table, stats, ids, scale_t, d_qkv, d_table, delta, H, K, Dh, grid_size, *qkv.stride(),
            *table.stride(), **blocks, num_stages=stages)
        _attn_bwd_dkv_kernel[(B * H, cdiv(K, blocks["BLOCK_N"]))](
            grad, qkv, table, stats, ids, scale_t, d_qkv, delta, H, K, Dh, grid_size, *qkv.stride(), *table.stride(),
            **blocks, num_stages=stages)
    return d_qkv, d_table


# ---------------------------------------------------------------------------------------------------
# Checks and registration: fake kernels and autograd, shared by the C++ op and its Triton twin


def _check_qkv(qkv):
    _checks.check_tensor("qkv", qkv, 5, "(B, K, 3, H, Dh)")
    _checks.check_float("qkv", qkv)
    _checks.check_shape("qkv", qkv, (None, None, 3, None, None), "(B, K, 3, H, Dh)")


def check(qkv, table, grid_size, ids_keep, scale):
    """qkv (B, K, 3, H, Dh) float, the (R, H) table of masked_rel_pos_bias, (B, K) int64 ids_keep, a float
    scale, one device: the public function's arguments (the full grid as ids_keep = all positions) and the
    fake kernel's."""
    _check_qkv(qkv)
    B, K, _, H, _ = qkv.shape
    check_table(table, grid_size, heads=H)
    _checks.check_ids("ids_keep", ids_keep, B, K, batch_of="qkv", tokens_of="qkv")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.SymFloat)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    _checks.check_same("device", qkv=qkv, table=table, ids_keep=ids_keep)


def _fake_forward(qkv, table, grid_size, ids_keep, scale):
    check(qkv, table, grid_size, ids_keep, scale)
    B, K, _, H, Dh = qkv.shape
    return qkv.new_empty((B, K, H, Dh)), qkv.new_empty((B, H, K, 2), dtype=acc_dtype(qkv.dtype))


def _fake_backward(grad_out, qkv, table, stats, ids_keep, grid_size, scale):
    check(qkv, table, grid_size, ids_keep, scale)
    B, K, _, H, Dh = qkv.shape
    _checks.check_tensor("grad_out", grad_out, 4, "(B, K, H, Dh)")
    _checks.check_shape("grad_out", grad_out, (B, K, H, Dh), "(B, K, H, Dh) of qkv")
    _checks.check_float("grad_out", grad_out)
    _checks.check_tensor("stats", stats, 4, "(B, H, K, 2)")
    _checks.check_shape("stats", stats, (B, H, K, 2), "(B, H, K, 2) of qkv")
    return qkv.new_empty(qkv.shape), stats.new_empty((table.shape[0], H))


def _setup_context(ctx, inputs, output):
    qkv, table, grid_size, ids_keep, scale = inputs
    _, stats = output
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)  # stats have no gradient; out's is None when out did not reach the loss
    ctx.save_for_backward(qkv, table, stats, ids_keep)
    ctx.grid_size, ctx.scale, ctx.table_dtype = grid_size, scale, table.dtype


def _backward(backward_op, ctx, grad_out, _grad_stats):
    if grad_out is None:  # out did not reach the loss
        return None, None, None, None, None
    qkv, table, stats, ids_keep = ctx.saved_tensors
    d_qkv, d_table = backward_op(grad_out, qkv, table, stats, ids_keep, ctx.grid_size, ctx.scale)
    return d_qkv, d_table.to(ctx.table_dtype), None, None, None


register_op("rel_pos_attention", fake_forward=_fake_forward, fake_backward=_fake_backward,
            setup_context=_setup_context, backward=_backward)


def _compiled(ops, qkv, table, grid_size, ids_keep, scale):
    return ops.rel_pos_attention(qkv, table, grid_size, ids_keep, scale)[0]


# Under no_grad / inference_mode the CPU backend runs rel_pos_attention_inference, which keeps no softmax
# stats (only a backward reads them).
_inference = register_inference("rel_pos_attention", lambda *a: _fake_forward(*a)[0])

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
        scale: factor of q k^T; default Dh ** -0.5 (1 for Dh = 0, an empty output).
    Returns:
        (B, K, H, Dh) in qkv's dtype (``.reshape(B, K, H * Dh)`` is free), with
        ``out[b, :, h] = softmax(q k^T * scale + masked_rel_pos_bias(table, G, ids_keep)[b, h]) v``.
        Differentiable in qkv and table.
    """
    _check_qkv(qkv)
    B, K, _, _, Dh = qkv.shape
    check_table(table, grid_size)
    if scale is None:
        scale = Dh**-0.5 if Dh > 0 else 1.0  # Dh = 0: the output is empty, whatever the scale
    full = ids_keep is None  # the full grid is the all-tokens-kept case of the same kernel
    if full:
        if K != grid_size * grid_size:
            raise ValueError(f"without ids_keep qkv must hold all grid_size^2 = {grid_size ** 2} tokens, got K = {K}")
        ids_keep = torch.arange(K, device=qkv.device).expand(B, K)
    ids_keep = _checks.as_ids("ids_keep", ids_keep)
    check(qkv, table, grid_size, ids_keep, scale)
    backend, run = _dispatch.implementation("rel_pos_attention", qkv.device, qkv, table)
    if backend != "cpu" and not full:  # the C++ CPU kernel checks the id range itself
        _checks.check_id_values("ids_keep", ids_keep, grid_size * grid_size)
    if backend == "reference":
        return rel_pos_attention_ref(qkv, table, grid_size, None if full else ids_keep, float(scale))
    return run(qkv, table, grid_size, ids_keep, float(scale))


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    """On a grid (s.G > 0): the K kept tokens of (B, K, 3, H, D // H) qkv, or the full grid (no ids_keep)."""
    if not s.G:
        return []
    qkv = torch.randn(s.B, s.K, 3, s.H, s.D // s.H if s.H else s.D).to(dtype)
    table = (0.5 * torch.randn((2 * s.G - 1) ** 2 + 3, s.H)).to(dtype)  # MDT's table has 3 unused extra rows
    ids = None if s.K == s.G * s.G else example_ids(s.B, s.K, s.G * s.G)
    return [Example((qkv, table, s.G, ids), grad=(0, 1))]


declare(Op("rel_pos_attention", rel_pos_attention, compiled=_compiled, inference=_inference, examples=_examples,
           # On CUDA the model's attention (xformers, SDPA) with the bias of masked_rel_pos_bias is the fast path;
           # the Triton kernel is written to be right, and runs there only when asked for.
           auto={"cuda": ()},
           impls={"reference": rel_pos_attention_ref, "cpu": functools.partial(_compiled, torch.ops.mdt_kernels),
                  "triton": lambda *a: rel_pos_attention_triton(*a)[0]}))
