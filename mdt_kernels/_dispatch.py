"""The one place that decides which implementation of an op runs.

Backends (all compute the same function):
  reference  plain PyTorch, any device; the oracle.
  cpu        C++ kernels of mdt_kernels._C, CPU tensors.
  cuda       CUDA kernels of mdt_kernels._C (built only against a CUDA torch), CUDA tensors.
  triton     Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (tests only: slow).

The backend is global state: ``set_backend(name)`` sets it; ``with use_backend(name):`` sets it for a block
(from entering to leaving it: constructing one does nothing); ``MDT_KERNELS_BACKEND`` gives the default, else
``auto``. An op's kernels are the backends its declaration implements (mdt_kernels._registry; the reference
runs everywhere). ``implementation(op, device, *inputs)`` is the decision: the backend (``auto`` takes the
first of ``AUTO_ORDER[device type]``, or of the op's own order, that the op has and that can run here) and,
on the cpu backend, the op's inference form when autograd will not record the call. An explicit backend
that cannot run raises ``BackendError`` with the reason; nothing is replaced silently, except for an op that
declares its reference as its implementation where it has no kernel. Code that chooses between an op and
something else (mdt's attention, its optimizer) asks ``runs_fused`` rather than reading the setting itself.
``add_backend`` attaches a backend from outside the package (the test suite does).
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from collections.abc import Callable

import torch

from . import _registry

BACKENDS = ("reference", "cpu", "triton", "cuda")
# Fastest first, per device type. Interpreted Triton on CPU is never chosen automatically.
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
# The device types whose tensors each compiled or Triton backend runs.
_DEVICES = {"cpu": ("cpu",), "cuda": ("cuda",), "triton": ("cpu", "cuda")}


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run these inputs."""


def _load_extension() -> str | None:
    """Imports mdt_kernels._C (which registers the C++/CUDA kernels); returns why not, or None."""
    try:
        from mdt_kernels import _C  # noqa: F401
    except ImportError as e:  # not built, or built against another torch
        return f"the compiled extension mdt_kernels._C could not be loaded ({e}); build it with `make build`"
    return None


def _registered_keys() -> set[str]:
    """The dispatch keys ("cpu", "cuda") for which mdt_kernels._C registered kernels."""
    registered = torch._C._dispatch_get_registrations_for_dispatch_key
    return {key.lower() for key in ("CPU", "CUDA") if any(n.startswith("mdt_kernels::") for n in registered(key))}


# Facts fixed at import (and so constant under torch.compile): what was built, what is installed.
_EXT_ERROR = _load_extension()
_EXT_KEYS = _registered_keys() if _EXT_ERROR is None else set()
_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Triton reads this when kernels are decorated, so a later change would not take effect anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Backends attached by add_backend: name -> (device type, why it cannot run or None).
_ADDED: dict[str, tuple[str, str | None]] = {}


def add_backend(name: str, device_type: str, unavailable: str | None = None) -> None:
    """Attaches a backend that runs ``device_type`` tensors (``unavailable``: why it cannot run, or None).
    It can be selected by name, is never chosen by ``auto``, and runs the ops whose ``impls`` name it."""
    if name in BACKENDS or name == "auto":
        raise ValueError(f"backend {name!r} is built in")
    _ADDED[name] = (device_type, unavailable)


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS and name not in _ADDED:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(('auto',) + BACKENDS + tuple(_ADDED))}")
    return name


_backend = _check_name(os.environ.get("MDT_KERNELS_BACKEND", "auto").strip().lower() or "auto")


def get_backend() -> str:
    """The backend currently requested ('auto' or a name from BACKENDS)."""
    return _backend


def set_backend(name: str) -> None:
    """Selects the backend from now on (for a block of code: ``with use_backend(name):``)."""
    global _backend
    _backend = _check_name(name)


class _Switch:
    """A setting selected inside a ``with`` block: the name is checked when constructed, set when the
    block is entered, and the previous value restored when it ends (exception or not). Constructing one
    changes nothing; it can be entered again, also nested."""

    def __init__(self, name: str):
        self.name = self._check(name)
        self._previous: list[str] = []

    def __enter__(self):
        self._previous.append(self._get())
        self._set(self.name)
        return self

    def __exit__(self, *exc) -> None:
        self._set(self._previous.pop())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class use_backend(_Switch):
    """Selects the backend inside a ``with`` block (``set_backend``: from now on).

    >>> with mdt_kernels.use_backend("reference"):
    ...     y = model(x)
    """

    _check, _get, _set = staticmethod(_check_name), staticmethod(get_backend), staticmethod(set_backend)


def _device_types(backend: str) -> tuple[str, ...]:
    return (_ADDED[backend][0],) if backend in _ADDED else _DEVICES.get(backend, ())


def _has(decl: _registry.Op, backend: str, device_type: str) -> bool:
    return backend != "reference" and backend in decl.impls and device_type in _device_types(backend)


def op_kernels(op: str, device: torch.device | str) -> tuple[str, ...]:
    """The backends ``op`` has for tensors of ``device``: its kernels, then "reference" (whatever this build
    and machine can run: see available_backends)."""
    decl, dev = _registry.get(op), torch.device(device).type
    return tuple(b for b in BACKENDS + tuple(_ADDED) if _has(decl, b, dev)) + ("reference",)


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` cannot run on tensors of ``device``; None when it can."""
    dev = torch.device(device).type
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if dev != backend:
            return f"the {backend} backend runs on {backend} tensors, these are on {dev}"
        if _EXT_ERROR is not None:
            return _EXT_ERROR
        if backend not in _EXT_KEYS:
            return f"mdt_kernels._C was built without {backend} kernels (torch without CUDA or no nvcc at build time)"
        return None
    if backend == "triton":
        if not _HAS_TRITON:
            return "triton is not installed"
        if dev == "cuda":
            return None
        if dev == "cpu":
            if _TRITON_INTERPRET:
                return None
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing triton)"
        return f"Triton does not run on {dev} tensors"
    if backend in _ADDED:
        device_type, why = _ADDED[backend]
        return f"the {backend} backend runs on {device_type} tensors, these are on {dev}" if dev != device_type else why
    raise ValueError(f"unknown backend {backend!r}")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run here: for ``device`` if given, else for any device this machine has."""
    listed = BACKENDS + tuple(_ADDED)
    if device is not None:
        return [b for b in listed if unavailable_reason(b, device) is None]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [b for b in listed if any(unavailable_reason(b, d) is None for d in devices)]


def has_kernel(op: str, backend: str, device: torch.device | str) -> bool:
    """Whether ``op`` has a kernel of ``backend`` for ``device`` tensors (the reference counts as one)."""
    return backend == "reference" or _has(_registry.get(op), backend, torch.device(device).type)


_warned: set = set()


def _warn_reference(op: str, device: torch.device) -> None:
    """Once per device type (per op, for an op without every kernel): auto fell back to the reference."""
    first = AUTO_ORDER[device.type][0]
    if has_kernel(op, first, device):
        key, why = device.type, unavailable_reason(first, device)
    else:
        key, why = (device.type, op), f"{op} has no {first} kernel"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"mdt_kernels: no fused backend for {device.type} tensors ({why}); using the PyTorch reference",
                      stacklevel=4)


def _choose(op: str, device: torch.device) -> tuple[str, str | None]:
    """(backend, why it cannot run or None) under the current setting."""
    decl, dev = _registry.get(op), device.type
    if _backend != "auto":
        why = unavailable_reason(_backend, device)
        if why is None and _backend != "reference" and not _has(decl, _backend, dev):
            if decl.reference_elsewhere:
                return "reference", None
            why = f"{op} has no {_backend} kernel (it has: {', '.join(op_kernels(op, device))})"
        return _backend, why
    for name in decl.auto.get(dev, AUTO_ORDER.get(dev, ())):
        if name == "reference":
            break
        if _has(decl, name, dev) and unavailable_reason(name, device) is None:
            return name, None
    return "reference", None


def _quiet_reference(op: str, device: torch.device) -> bool:
    """Whether the op runs its reference on this device type by its own declaration (no warning)."""
    decl = _registry.get(op)
    return decl.reference_elsewhere or device.type in decl.auto


def resolve(op: str, device: torch.device) -> str:
    """The backend that will run ``op`` for tensors on ``device`` under the current setting."""
    backend, why = _choose(op, device)
    if why is not None:
        raise BackendError(f"mdt_kernels.{op}: backend {_backend!r} cannot run: {why}")
    if backend == "reference" and _backend == "auto" and device.type in AUTO_ORDER and not _quiet_reference(op, device):
        _warn_reference(op, device)
    return backend


def grad_needed(*inputs) -> bool:
    """Whether autograd records a call with these inputs: grad mode on (not torch.no_grad() or inference_mode)
    and a tensor among them that requires grad."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in inputs)


def implementation(op: str, device: torch.device, *inputs) -> tuple[str, Callable]:
    """(backend, function) that runs ``op`` for tensors on ``device`` under the current setting: the backend's
    implementation, or on the cpu backend the op's inference form when autograd will not record a call with
    ``inputs`` (the tensors it could differentiate in)."""
    backend = resolve(op, device)
    decl = _registry.get(op)
    if backend == "cpu" and decl.inference is not None and not grad_needed(*inputs):
        return backend, decl.inference
    return backend, decl.impls[backend]


def runs_fused(op: str, device: torch.device | str) -> bool:
    """Whether ``op`` runs one of its kernels (not the reference) for ``device`` tensors under the current
    setting; never raises nor warns. For code that would run something else than the op's reference
    otherwise (mdt's attention: xformers or SDPA; Adan: its foreach path)."""
    backend, why = _choose(op, torch.device(device))
    return why is None and backend != "reference"


# ---------------------------------------------------------------------------------------------------
# The GEMM engine of the cpu backend's kernels that multiply by a weight (linear, linear_gelu)

CPU_GEMM_ENGINES = ("auto", "mdt", "onednn", "aten")

# The dtypes the CPU GEMM engine serves; cpu_gemm_engine() reports one engine for each.
_GEMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def cpu_gemm_engine(dtype: torch.dtype | None = None) -> str | dict[str, str] | None:
    """The engine ("mdt", "onednn" or "aten") that runs the CPU GEMMs of linear and linear_gelu in
    ``dtype``, or, without a dtype, a dict of it for float32, bfloat16, float16 and float64; None without
    the compiled extension. The setting (MDT_KERNELS_CPU_GEMM or use_cpu_gemm_engine, default "auto")
    chooses per dtype: auto follows the table in csrc/cpu/gemm.cpp (an engine other than ATen only where this
    CPU runs the dtype on it and it was measured faster); "mdt" takes mdt_kernels' own GEMM for fp32
    (ATen for the other dtypes), "onednn" oneDNN wherever it runs the dtype, "aten" ATen always; a dtype
    oneDNN cannot run here (bf16 without AVX-512) gets ATen's under "onednn"."""
    if _EXT_ERROR is not None:
        return None
    if dtype is not None:
        return torch.ops.mdt_kernels.cpu_gemm_engine(dtype)
    return {str(d).removeprefix("torch."): torch.ops.mdt_kernels.cpu_gemm_engine(d) for d in _GEMM_DTYPES}


def cpu_gemm_setting() -> str | None:
    """The CPU GEMM setting in force: "auto", "mdt", "onednn" or "aten" (None without the extension)."""
    return None if _EXT_ERROR is not None else torch.ops.mdt_kernels.cpu_gemm_setting()


def _extension_setting(what: str, choices: tuple[str, ...]):
    """The name check of a setting of the compiled extension: ValueError for an unknown name, BackendError
    without the extension."""
    def check(name: str) -> str:
        if name not in choices:
            raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(choices)}")
        if _EXT_ERROR is not None:
            raise BackendError(f"no {what} to select: {_EXT_ERROR}")
        return name

    return check


_check_gemm_engine = _extension_setting("CPU GEMM engine", CPU_GEMM_ENGINES)


def set_cpu_gemm_engine(name: str) -> None:
    """Selects the CPU GEMM setting ("auto", "mdt", "onednn" or "aten") from now on."""
    torch.ops.mdt_kernels.set_cpu_gemm_engine(_check_gemm_engine(name))  # ValueError when PyTorch lacks oneDNN


class use_cpu_gemm_engine(_Switch):
    """Selects the CPU GEMM setting ("auto", "mdt", "onednn" or "aten") inside a ``with`` block."""

    _check, _get, _set = staticmethod(_check_gemm_engine), staticmethod(cpu_gemm_setting), staticmethod(
        set_cpu_gemm_engine)


# ---------------------------------------------------------------------------------------------------
# The instruction set of the cpu backend's vectorised kernels (csrc/cpu/isa.h)

CPU_CAPABILITIES = ("default", "avx2", "avx512", "sve256")  # x86-64: the first three; aarch64: default, sve256


def cpu_capability() -> str | None:
    """The instruction set the CPU kernels run now: "default" (the portable baseline), "avx2" or
    "avx512" (x86-64), "sve256" (aarch64); None without the compiled extension. The best one this build
    and CPU have, unless capped by MDT_KERNELS_CPU_CAPABILITY, else by ATen's ATEN_CPU_CAPABILITY, or set
    by use_cpu_capability."""
    return None if _EXT_ERROR is not None else torch.ops.mdt_kernels.cpu_capability()


def cpu_capabilities() -> list[str]:
    """Every instruction set of the CPU kernels that this build has and this CPU runs, lowest first."""
    return [] if _EXT_ERROR is not None else list(torch.ops.mdt_kernels.cpu_capabilities())


_check_capability = _extension_setting("CPU capability", CPU_CAPABILITIES)


def set_cpu_capability(name: str) -> None:
    """Sets the instruction set of the CPU kernels (one of cpu_capabilities()) from now on."""
    torch.ops.mdt_kernels.set_cpu_capability(_check_capability(name))  # ValueError when this CPU or build lacks it


class use_cpu_capability(_Switch):
    """Sets the instruction set of the CPU kernels (one of cpu_capabilities()) inside a ``with`` block."""

    _check, _get, _set = staticmethod(_check_capability), staticmethod(cpu_capability), staticmethod(
        set_cpu_capability)


# ---------------------------------------------------------------------------------------------------
# torch.compile under a capped ATen


def use_inductor_cache_per_aten_capability(environ=os.environ) -> str | None:
    """Gives processes that cap ATen (ATEN_CPU_CAPABILITY) an inductor cache of their own per capability:
    sets TORCHINDUCTOR_CACHE_DIR to inductor's default directory + "_aten-<capability>" when the cap is set
    and the variable is not (a directory the user chose is kept). Returns the directory it set, else None.

    torch 2.13's inductor caches are not keyed on the cap: a process capped at avx2 loads the graph an
    uncapped one compiled for AVX-512 and builds its C++ kernels, written for 16 lanes, with AVX2's 8-lane
    at::vec (wrong numbers: half of each step is skipped, and partial loads overrun their 8-lane buffer);
    under the baseline cap that code does not compile at all; the other way round, an uncapped process builds
    kernels written for AVX2 with AVX-512's 16 lanes and corrupts the heap. Inductor reads the variable at its
    first compile: call this before any torch.compile."""
    cap = environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if not cap or environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    directory = f"{default_cache_dir()}_aten-{re.sub(r'[^a-z0-9_]', '_', cap)}"
    environ["TORCHINDUCTOR_CACHE_DIR"] = directory
    return directory
