"""The one place that decides which implementation of an op runs.

Backends (all compute the same function):
  reference  plain PyTorch, any device; the oracle.
  cpu        C++ kernels of mdt_kernels._C, CPU tensors.
  cuda       CUDA kernels of mdt_kernels._C (built only against a CUDA torch), CUDA tensors.
  triton     Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (tests only: slow).
  cuda_sim   test-only, never listed nor chosen for users: the cuda backend's bindings and kernels built for
             the host execution layer csrc/simt (mdt_kernels._C_sim, ops mdt_kernels_sim::*), on CPU tensors.
             Enabled by MDT_KERNELS_SIM=1 (MDT_KERNELS_SIM=asan: the sanitizer build _C_sim_asan) before import.

The backend is global state: ``set_backend(name)`` sets it; ``with use_backend(name):`` sets it for a block
(from entering to leaving it: constructing one does nothing); ``MDT_KERNELS_BACKEND`` gives the default, else
``auto``. Each op declares the kernels it has per device type (``declare_kernels``; the reference runs
everywhere) and asks ``resolve`` which one runs: ``auto`` takes the first backend of ``AUTO_ORDER[device type]``
the op has and that can run here. An explicit backend that cannot run raises ``BackendError`` with the
reason; nothing is replaced silently. Code that chooses between an op and something else (mdt's models,
its optimizer) asks ``runs_fused`` rather than reading the setting itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
SIM = "cuda_sim"
_CHOICES = ("auto",) + BACKENDS + (SIM,)
# Fastest first, per device type. Interpreted Triton on CPU is never chosen automatically.
AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


class BackendError(RuntimeError):
    """An explicitly requested backend cannot run these inputs."""


def _load_extension() -> str | None:
    """Imports mdt_kernels._C (which registers the C++/CUDA kernels); returns why not, or None."""
    try:
        from mdt_kernels import _C  # noqa: F401
    except ImportError as e:  # not built, or built against another torch
        return f"the compiled extension mdt_kernels._C could not be loaded ({e}); build it with `make build`"
    return None


# Facts fixed at import (and so constant under torch.compile): what was built, what is installed.
_EXT_ERROR = _load_extension()
_EXT_KEYS = {
    key.lower()
    for key in ("CPU", "CUDA")
    if _EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("mdt_kernels::gather_tokens", key)
}


def _load_sim() -> str | None:
    """Imports the cuda_sim extension when MDT_KERNELS_SIM asks for it; returns why it cannot run, or None."""
    switch = os.environ.get("MDT_KERNELS_SIM", "0").strip().lower()
    if switch not in ("1", "asan"):
        return f"{SIM} is a test-only backend: set MDT_KERNELS_SIM=1 before importing mdt_kernels"
    module = "_C_sim_asan" if switch == "asan" else "_C_sim"
    try:
        importlib.import_module(f"mdt_kernels.{module}")
    except ImportError as e:
        return f"mdt_kernels.{module} could not be loaded ({e}); build it with `make build`"
    return None


_SIM_ERROR = _load_sim()
_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Triton reads this when kernels are decorated, so a later change would not take effect anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _check_name(name: str) -> str:
    if name not in _CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(_CHOICES)}")
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
    ...     y = mdt_kernels.gather_tokens(x, ids)
    """

    _check, _get, _set = staticmethod(_check_name), staticmethod(get_backend), staticmethod(set_backend)


# The kernels each op has, per device type; the reference (any device) is implied. An op that declares
# nothing has every backend that runs on the device: cpu and triton on CPU tensors, cuda and triton on CUDA ones.
_ALL_KERNELS = {"cpu": ("cpu", "triton"), "cuda": ("cuda", "triton")}
_KERNELS: dict[str, dict[str, tuple[str, ...]]] = {}


def declare_kernels(op: str, **per_device: tuple[str, ...]) -> None:
    """Declares the kernels of ``op`` per device type, e.g. ``declare_kernels("linear", cpu=("cpu",), cuda=())``."""
    for dev, names in per_device.items():
        bad = [n for n in names if n not in BACKENDS or n == "reference"]
        if dev not in _ALL_KERNELS or bad:
            raise ValueError(f"declare_kernels({op!r}): unknown device type {dev!r} or backends {bad}")
    _KERNELS[op] = {dev: tuple(per_device.get(dev, ())) for dev in _ALL_KERNELS}


def op_kernels(op: str, device: torch.device | str) -> tuple[str, ...]:
    """The backends ``op`` has for tensors of ``device``: its kernels, then "reference" (whatever this build
    and machine can run: see available_backends)."""
    return _KERNELS.get(op, _ALL_KERNELS).get(torch.device(device).type, ()) + ("reference",)


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
    if backend == SIM:
        if dev != "cpu":
            return f"the {SIM} backend runs on cpu tensors, these are on {dev}"
        return _SIM_ERROR
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
    raise ValueError(f"unknown backend {backend!r}")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run here: for ``device`` if given, else for any device this machine has."""
    if device is not None:
        return [b for b in _listed() if unavailable_reason(b, device) is None]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [b for b in _listed() if any(unavailable_reason(b, d) is None for d in devices)]


def _listed() -> tuple[str, ...]:
    """BACKENDS, and cuda_sim when the test switch has loaded it."""
    return BACKENDS + ((SIM,) if _SIM_ERROR is None else ())


def has_kernel(op: str, backend: str, device: torch.device | str) -> bool:
    """Whether ``op`` has a kernel of ``backend`` for ``device`` tensors (cuda_sim, CPU tensors on the cuda
    backend's kernels, runs the ops that have a cuda kernel)."""
    if backend == SIM:
        return "cuda" in op_kernels(op, "cuda")
    return backend in op_kernels(op, device)


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
    if _backend != "auto":
        why = unavailable_reason(_backend, device)
        if why is None and not has_kernel(op, _backend, device):
            why = f"{op} has no {_backend} kernel (it has: {', '.join(op_kernels(op, device))})"
        return _backend, why
    for name in AUTO_ORDER.get(device.type, ()):
        if has_kernel(op, name, device) and unavailable_reason(name, device) is None:
            return name, None
    return "reference", None


def resolve(op: str, device: torch.device) -> str:
    """The backend that will run ``op`` for tensors on ``device`` under the current setting."""
    backend, why = _choose(op, device)
    if why is not None:
        raise BackendError(f"mdt_kernels.{op}: backend {_backend!r} cannot run: {why}")
    if backend == "reference" and _backend == "auto" and device.type in AUTO_ORDER:
        _warn_reference(op, device)
    return backend


def runs_fused(op: str, device: torch.device | str) -> bool:
    """Whether ``op`` runs one of its kernels (not the reference) for ``device`` tensors under the current
    setting; never raises nor warns. For code that would run something else than the op's reference
    otherwise (mdt's Linear: nn.Linear; Adan: its foreach path)."""
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
    chooses per dtype: auto takes an engine only where this CPU runs the dtype on it and it was measured
    faster than ATen (fp32: mdt_kernels' own GEMM for the forward GEMMs at the AVX2 capability on AMD
    CPUs, oneDNN with AVX-512; bf16 where oneDNN has it); "mdt" takes mdt_kernels' own GEMM for fp32
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
