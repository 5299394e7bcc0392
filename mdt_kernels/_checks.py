"""Input checks shared by every op, run before any backend is called, so that bad input raises the
same clear Python exception whichever backend is selected.

Value checks on ids (range, distinctness) read the data. They run on CPU tensors; on GPU tensors they
would force a host synchronisation, so they run there only with ``MDT_KERNELS_CHECK_IDS=1``. Inside
``torch.compile`` they are skipped (the C++ kernels still check on CPU).
"""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CHECK_GPU_IDS = os.environ.get("MDT_KERNELS_CHECK_IDS", "0") == "1"


def check_tensor(name: str, t, ndim: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_same(what: str, **tensors: torch.Tensor | None) -> None:
    """All given tensors share `what` ('device' or 'dtype')."""
    seen = {name: getattr(t, what) for name, t in tensors.items() if t is not None}
    if len(set(seen.values())) > 1:
        listing = ", ".join(f"{name} on {v}" if what == "device" else f"{name} is {v}" for name, v in seen.items())
        raise (TypeError if what == "dtype" else ValueError)(f"tensors must share one {what}: {listing}")


def _values_checkable(ids: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return False
    return ids.device.type == "cpu" or _CHECK_GPU_IDS


def check_ids(
    name: str, ids, batch: int | None, upper: int, distinct: bool = False, values: bool = True
) -> torch.Tensor:
    """Validates a (B,K) index tensor into [0, upper) and returns it as int64.

    batch=None accepts any batch size. values=False skips the checks that read the data (for kernels
    that check them themselves)."""
    check_tensor(name, ids, 2, "(B, K)")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64 or int32), got {ids.dtype}")
    if batch is not None and ids.shape[0] != batch:
        raise ValueError(f"{name} has batch size {ids.shape[0]}, expected {batch}")
    if values and ids.numel() > 0 and _values_checkable(ids):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= upper:
            bad = lo if lo < 0 else hi
            raise IndexError(f"{name} holds {bad}, outside [0, {upper})")
        if distinct and ids.shape[1] > 1:
            s = ids.sort(dim=1).values
            dup = (s[:, 1:] == s[:, :-1]).nonzero()
            if dup.numel() > 0:
                b, k = dup[0].tolist()
                raise ValueError(f"{name} row {b} holds position {int(s[b, k])} twice; kept positions must be distinct")
    return ids.long()


def check_shape(name: str, t: torch.Tensor, shape: tuple, layout: str) -> None:
    """t has exactly `shape` (described as `layout`, e.g. "(B, D)")."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}, got {tuple(t.shape)}")
