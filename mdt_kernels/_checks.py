"""The pieces of each op's argument check. An op module writes one ``check`` function from them, which its
public function runs on the (normalised) arguments and its fake kernel on the traced ones, so that a bad
call raises the same error eagerly and under torch.compile. Conditions on sizes, which may be symbolic
when traced, go through ``require``.

Id values (range, distinctness) read the data: only the public functions check them, on CPU tensors (the
C++ CPU kernels check them again themselves), on GPU tensors only with ``MDT_KERNELS_CHECK_IDS=1`` (it
would force a host synchronisation), never inside torch.compile.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CHECK_GPU_IDS = os.environ.get("MDT_KERNELS_CHECK_IDS", "0") == "1"


def require(cond, message: Callable[[], str], error: type[Exception] = ValueError) -> None:
    """Raises error(message()) unless cond. Symbolic sizes: in a fake kernel the condition becomes
    torch._check_with's assertion; where dynamo traces a public function, a plain branch (dynamo guards on
    it, and takes no message closure that refers to tensors)."""
    if cond is True:  # eager sizes: nothing to trace
        return
    if torch.compiler.is_dynamo_compiling():
        if not cond:
            raise error(message())
    else:
        torch._check_with(error, cond, message)


def check_tensor(name: str, t, ndim: int, layout: str) -> None:
    """t is a tensor of ndim dimensions, described as layout (e.g. "(B, N, D)")."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype}, expected {dtype}")


def check_same(what: str, **tensors: torch.Tensor | None) -> None:
    """All given tensors share `what` ('device' or 'dtype')."""
    seen = [getattr(t, what) for t in tensors.values() if t is not None]
    if any(v != seen[0] for v in seen[1:]):
        listing = ", ".join(f"{name} on {getattr(t, what)}" if what == "device" else f"{name} is {getattr(t, what)}"
                            for name, t in tensors.items() if t is not None)
        raise (TypeError if what == "dtype" else ValueError)(f"tensors must share one {what}: {listing}")


def check_shape(name: str, t: torch.Tensor, shape: tuple, layout: str) -> None:
    """t has `shape` (ints or symbolic sizes; None leaves a dimension free), described as `layout`, e.g.
    "(B, D)": the message names the expected shape with the free dimensions as the layout's letters."""
    if t.dim() != len(shape):
        raise ValueError(f"{name} must be {len(shape)}-D {layout}, got shape {tuple(t.shape)}")

    def message():
        letters = [s.strip() for s in layout[layout.find("(") + 1:layout.find(")")].split(",")]
        want = ", ".join(str(w) if w is not None else letters[i] if i < len(letters) else "*"
                         for i, w in enumerate(shape))
        return f"{name} must have shape {layout} = ({want}), got {tuple(t.shape)}"

    for size, w in zip(t.shape, shape, strict=True):
        if w is not None:
            require(size == w, message)


def check_ids(name: str, ids, batch=None, tokens=None, *, batch_of: str = "", tokens_of: str = "") -> None:
    """ids is an int64 (B, K) tensor; batch/tokens, when given, its B and K (batch_of/tokens_of name what
    they come from, for the message)."""
    check_tensor(name, ids, 2, "(B, K)")
    check_dtype(name, ids, torch.int64)
    if batch is not None:
        require(ids.shape[0] == batch, lambda: f"{name} has batch size {ids.shape[0]}, expected {batch}"
                                                           + (f" ({batch_of})" if batch_of else ""))
    if tokens is not None:
        require(ids.shape[1] == tokens, lambda: f"{name} has {ids.shape[1]} tokens per sample but "
                                                            f"{tokens_of or 'the tokens'} has K = {tokens}")


def as_ids(name: str, ids) -> torch.Tensor:
    """A public function's index argument as int64 (int32 is widened); TypeError for other dtypes."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (int64 or int32), got {ids.dtype}")
    return ids.long()


def check_int(name: str, v, at_least: int | None = None) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if at_least is not None:
        require(v >= at_least, lambda: f"{name} must be >= {at_least}, got {v}")


def _values_checkable(ids: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or torch._subclasses.fake_tensor.is_fake(ids):
        return False
    return ids.device.type == "cpu" or _CHECK_GPU_IDS


def check_id_values(name: str, ids: torch.Tensor, upper: int, distinct: bool = False) -> None:
    """Every id is in [0, upper) and, with distinct, no row holds one twice (where the values can be read)."""
    if ids.numel() == 0 or not _values_checkable(ids):
        return
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
