"""The cuda_sim backend: the CUDA kernels and their torch bindings, executed on the CPU by csrc/simt, attached
to mdt_kernels by the test suite (tests/conftest.py calls ``attach()``), so that every per-op test checks the
CUDA kernels without a GPU: the same parametrised cases, opcheck, torch.compile, the device-side checks and
the layer's own checks of each launch (barriers, warp collectives, launch limits, shared-memory races).

``attach()`` loads the library that ``python tests/cuda_sim/build.py`` builds (``make test`` runs it), defines
every mdt_kernels schema again in the namespace mdt_kernels_sim (the bindings register their kernels there,
for CPU tensors), gives those ops the fake kernels and autograd of mdt_kernels' ops, and adds to each op that
has a CUDA kernel a cuda_sim implementation: its C++ call on the mdt_kernels_sim namespace.

MDT_CUDA_SIM selects the library: 1 (default) the plain build, asan the sanitizer build (``make
test-sanitize`` preloads libasan), 0 none (the cuda_sim params are then skipped with the reason).
"""

from __future__ import annotations

import functools
import os

import torch

from mdt_kernels import _dispatch, _registry
from mdt_kernels.ops import _register

from . import build

NAME = "cuda_sim"
NAMESPACE = "mdt_kernels_sim"
_LIBRARY: list = []  # the torch.library.Library holding the mirrored schemas (they live as long as it does)


def _load() -> str | None:
    """Loads the simulator library; returns why it cannot run, or None."""
    switch = os.environ.get("MDT_CUDA_SIM", "1").strip().lower()
    if switch not in ("1", "asan"):
        return f"the {NAME} backend is off (MDT_CUDA_SIM={switch})"
    if _dispatch._EXT_ERROR is not None:
        return _dispatch._EXT_ERROR
    path = os.path.join(build.build_dir(switch == "asan"), build.LIBRARY)
    if not os.path.exists(path):
        return f"{path} is not built: `make test` builds it (or python tests/cuda_sim/build.py)"
    torch.ops.load_library(path)
    return None


def _mirror_schemas() -> None:
    """Defines every mdt_kernels:: op again in NAMESPACE, with the same schema."""
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.startswith("mdt_kernels::"):
            lib.define(str(schema).removeprefix("mdt_kernels::"))
    _LIBRARY.append(lib)


def attach() -> None:
    """Adds the cuda_sim backend to mdt_kernels (available or, with the reason, not)."""
    if NAME in _dispatch._ADDED:
        return
    why = _load()
    _dispatch.add_backend(NAME, "cpu", why)
    if why is not None:
        return
    _mirror_schemas()
    _register.register_namespace(NAMESPACE)
    ops = getattr(torch.ops, NAMESPACE)
    for op in _registry.all_ops().values():
        if "cuda" in op.impls and op.compiled is not None:
            op.impls[NAME] = functools.partial(op.compiled, ops)
