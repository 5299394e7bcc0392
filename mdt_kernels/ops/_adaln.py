"""Shared by the three adaLN ops (adaln_modulate, gated_residual, residual_adaln_modulate): checks of the
(B,D) modulation tensors, the accumulation dtype and the Triton launch parameters."""

from __future__ import annotations

import torch

from .. import _checks
from .._triton import block_size, cdiv, tl

# Triton programs walk a row in blocks of at most MAX_BLOCK_D elements. Rows that fit in one block keep
# the per-sample partial sums of the backward in registers; longer rows accumulate them in the
# program's own slot of the partial buffer (read-modify-write by one program: still deterministic).
MAX_BLOCK_D = 4096


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and sums are fp32 for fp32/fp16/bf16 tensors, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


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
