"""The ops of mdt_kernels, each declared once by its own module.

``mdt_kernels/ops/<op>.py`` ends with ``declare(Op(...))``: its name, public function, implementations by
backend, and example calls. Everything that lists ops reads them from here: the package's exports, the
dispatcher (which backends an op has), the generic tests (empty inputs, fake kernels, inference forms),
the Triton AOT sweep and the benchmarks. Adding an op edits no list: a new module under ``ops/`` is
found by ``all_ops()``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sizes:
    """The sizes example calls are made at: batch B, tokens N of which K are kept, features D, heads H,
    grid side G (N = G*G for the ops on a token grid; 0: no grid), hidden width F (None: 4 * D)."""

    B: int
    N: int
    K: int
    D: int
    H: int = 1
    G: int = 0
    F: int | None = None

    @property
    def hidden(self) -> int:
        return 4 * self.D if self.F is None else self.F


@dataclass
class Example:
    """One call of an op's public function: ``function(*args, **kwargs)``; ``grad``: the indices of the
    arguments it is differentiable in."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad: tuple[int, ...] = ()


@dataclass
class Op:
    """An op as the dispatcher, the tests and the benchmarks see it.

    impls: backend name -> the function that runs the op on that backend, taking the checked arguments;
        "reference" is required; the backends named are the op's kernels ("cpu", "cuda", "triton").
    compiled: ``compiled(namespace, *args)`` calls the op's C++ form in ``namespace`` (torch.ops.mdt_kernels
        for the cpu and cuda backends); None for an op without one.
    inference: what the cpu backend runs when autograd will not record the call (no backward can follow): the
        C++ inference form, which keeps nothing for a backward; None: the training form always.
    auto: per device type, the backends ``auto`` may take for this op, fastest first, where they differ from
        the dispatcher's default order (an empty tuple: auto runs the reference there, by design).
    reference_elsewhere: where the op has no kernel of the backend in force, its reference runs, with no
        error and no warning (for an op whose reference is the fast path there, as cuBLAS is for linear).
    examples: ``examples(sizes, dtype)`` -> list of Example: calls of the public function at those sizes, for
        the generic tests and the Triton AOT sweep.
    """

    name: str
    function: Callable
    impls: dict[str, Callable]
    compiled: Callable | None = None
    inference: Callable | None = None
    auto: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reference_elsewhere: bool = False
    examples: Callable[[Sizes, torch.dtype], list[Example]] | None = None


OPS: dict[str, Op] = {}


def declare(op: Op) -> Op:
    """Adds an op to the registry (an op module's last statement)."""
    if "reference" not in op.impls:
        raise ValueError(f"op {op.name!r} declares no reference implementation")
    OPS[op.name] = op
    return op


def get(name: str) -> Op:
    """The declared op ``name`` (KeyError for an unknown one)."""
    return OPS[name]


def all_ops() -> dict[str, Op]:
    """Every op of mdt_kernels: imports each module of mdt_kernels.ops (each declares its ops)."""
    from . import ops

    for mod in pkgutil.iter_modules(ops.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{ops.__name__}.{mod.name}")
    return OPS


# ---------------------------------------------------------------------------------------------------
# Inputs for the example calls


def example_ids(B: int, K: int, N: int, device=None) -> torch.Tensor:
    """(B, K) int64: K distinct positions of [0, N) per row (MAE's kept set), in random order."""
    if B == 0 or K == 0:
        return torch.zeros(B, K, dtype=torch.long, device=device)
    return torch.stack([torch.randperm(N)[:K] for _ in range(B)]).to(device)


def example_rows(B: int, D: int, k: int, dtype, device=None) -> list[torch.Tensor]:
    """k (B, D) views of one (B, 6D) tensor, as adaLN_modulation(c).chunk(6, dim=1) gives them to a block."""
    base = (0.5 * torch.randn(B, 6 * D, device=device)).to(dtype)
    return [base[:, i * D:(i + 1) * D] for i in range(k)]
