"""Shared test helpers: which (backend, device) pairs can run here, and one tolerance table per dtype."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import settings

import mdt_kernels as mk

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FUSED = ("cpu", "cuda", "triton")
# The test suite's backend that runs the cuda backend's bindings and kernels on CPU tensors (tests/cuda_sim,
# attached by conftest.py); it joins every list of backends that holds "cuda".
SIM = "cuda_sim"
NEEDS_GPU = "needs a physical GPU (no CUDA device here; the cuda_sim params run these CUDA kernels on the CPU)"
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# Tolerances for results that involve rounding (sums); pure copies are compared exactly.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}



def backend_device_pairs(backends=FUSED) -> list:
    """pytest params (backend, device) for every listed backend that can run here; the others are
    reported as skipped with the reason, so a missing build is visible, never silent."""
    params = []
    if "cuda" in backends and SIM not in backends:
        backends = tuple(backends) + (SIM,)
    for device in ["cpu", "cuda"]:
        for b in backends:
            if b in ("cpu", "cuda") and b != device or b == SIM and device != "cpu":
                continue
            marks = [getattr(pytest.mark, b)] if b in ("triton", SIM, "reference") else []
            if device == "cuda":
                marks.append(pytest.mark.cuda)
            why = None if device in DEVICES else NEEDS_GPU
            why = why or mk._dispatch.unavailable_reason(b, device)
            if why is not None:
                marks.append(pytest.mark.skip(reason=why))
            params.append(pytest.param(b, device, marks=marks, id=f"{b}-{device}"))
    return params


def cpu_params(backends) -> list:
    """pytest params for backends run on CPU tensors; one that cannot run here is reported as skipped with
    the reason."""
    return [pytest.param(b, id=b, marks=([getattr(pytest.mark, b)] if b in ("triton", SIM, "reference") else [])
                         + ([pytest.mark.skip(reason=why)] if why else []))
            for b in backends for why in [mk._dispatch.unavailable_reason(b, "cpu")]]


# The backends that take CPU tensors in every test environment (for checks of bad input).
CPU_BACKENDS = cpu_params(("reference", "cpu", "triton"))


def op_namespace(backend: str):
    """Where the registered C++ op of ``backend`` lives: mdt_kernels_sim for cuda_sim (the CUDA bindings on
    CPU tensors), else mdt_kernels (cpu, cuda and the *_triton twins)."""
    return torch.ops.mdt_kernels_sim if backend == SIM else torch.ops.mdt_kernels


def compiled_backends() -> list:
    """pytest params for the backends whose registered C++ ops take CPU tensors when called directly: cpu
    (mdt_kernels::*) and cuda_sim (mdt_kernels_sim::*, the CUDA bindings and kernels)."""
    return cpu_params(("cpu", SIM))


def device_check_error(backend: str) -> tuple[type, str]:
    """(exception, message pattern) of an out-of-range id that reaches the op: the C++ CPU op checks on the
    host (IndexError); a CUDA kernel's device-side check fails the launch (RuntimeError, as on a GPU)."""
    return (RuntimeError, "device-side assertion failed") if backend == SIM else (IndexError, "outside")


def is_interpreted(backend: str, device: str) -> bool:
    """Kernels simulated on the CPU (Triton's interpreter, cuda_sim's fibers): slow, so fewer examples."""
    return backend == SIM or (backend == "triton" and device == "cpu")


def property_settings(backend: str, device: str) -> settings:
    """Hypothesis settings for a property test on one backend: few examples under Triton's interpreter
    (it simulates every program instance in numpy), no deadline (first calls compile), reproducible."""
    return settings(max_examples=8 if is_interpreted(backend, device) else 30, deadline=None, derandomize=True)


@contextlib.contextmanager
def nan_filled_memory():
    """torch.empty (and new_empty, empty_like, ... on CPU and CUDA) returns NaN-filled memory inside the block
    (integer tensors their maximum): a kernel that leaves part of its output unwritten shows it."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, **kw) -> None:
    tol = dict(TOL[dtype or expected.dtype])
    tol.update(kw)
    torch.testing.assert_close(actual, expected.to(actual.dtype), **tol)


def strided(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view with t's values: every other element of a twice-as-wide last dim."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2].detach().requires_grad_(t.requires_grad)


def forward_and_grads(fn, inputs: list, wrt: list[int], grad_out: torch.Tensor):
    """fn(*inputs) and the gradients w.r.t. inputs[i] for i in wrt (zeros for an empty output)."""
    leaves = [t.detach().requires_grad_(True) if i in wrt else t for i, t in enumerate(inputs)]
    out = fn(*leaves)
    if out.numel() == 0:
        return out, [torch.zeros_like(leaves[i]) for i in wrt]
    grads = torch.autograd.grad(out, [leaves[i] for i in wrt], grad_out, allow_unused=True)
    return out, [torch.zeros_like(leaves[i]) if g is None else g for i, g in zip(wrt, grads)]


def as_float64(inputs: list) -> list:
    return [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]


# Per-sample sums over the tokens (the adaLN family's modulation gradients): in fp32 their rounding grows
# with the token count, and eager fp32 PyTorch is itself off by more than TOL at a few hundred tokens.
TOKEN_SUMS = ("dshift", "dscale", "dgate")


def assert_close_fp32(actual: torch.Tensor, ref: torch.Tensor, eager: torch.Tensor, name: str) -> None:
    """fp32 against the fp64 reference: within TOL, or for a per-sample sum over tokens (TOKEN_SUMS)
    within the low-precision criterion of assert_close_to_ref (twice eager fp32's error + atol)."""
    if name in TOKEN_SUMS:
        assert_close_to_ref(actual, ref, eager, name)
    else:
        assert_close(actual, ref, torch.float32, msg=lambda m: f"{name}: {m}")


def assert_close_to_ref(actual: torch.Tensor, ref: torch.Tensor, eager: torch.Tensor, name: str = "result") -> None:
    """The low-precision criterion: max|actual - ref| <= 2 * max|eager - ref| + atol(dtype).

    ref is the exact function (fp64, from the same rounded inputs); eager is plain PyTorch evaluated in
    actual's dtype, so the bound adapts to the rounding that dtype makes unavoidable."""
    assert actual.shape == ref.shape and actual.dtype == eager.dtype, (actual.shape, ref.shape, actual.dtype)
    if ref.numel() == 0:
        return
    err = (actual.double() - ref.double()).abs().max().item()
    err_eager = (eager.double() - ref.double()).abs().max().item()
    bound = 2 * err_eager + TOL[actual.dtype]["atol"]
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (eager {actual.dtype} error {err_eager:.3g})"


MOD_LAYOUTS = ("chunk", "transposed", "contiguous")


def modulation(B: int, D: int, k: int, dtype, device, layout: str = "chunk") -> list[torch.Tensor]:
    """k (B,D) adaLN modulation tensors (shift/scale/gate), laid out as in DiT/MDT ("chunk": views of
    adaLN_modulation(c).chunk(6, dim=1), row stride 6D), column-major ("transposed": strides (1, B)) or
    contiguous. Values ~ N(0, 0.5^2)."""
    if layout == "chunk":
        base = 0.5 * torch.randn(B, 6 * D, dtype=dtype, device=device)
        return list(base.split(D, dim=1)[:k])
    if layout == "transposed":
        return [(0.5 * torch.randn(D, B, dtype=dtype, device=device)).t() for _ in range(k)]
    return [0.5 * torch.randn(B, D, dtype=dtype, device=device) for _ in range(k)]


def assert_same_for_thread_counts(fn, counts=(1, 2, 3)) -> None:
    """fn() gives bitwise-equal tensors (or tuples of them) under each torch thread count."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            out = fn()
            results.append(out if isinstance(out, (tuple, list)) else (out,))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def compile_frame_count(fn, calls) -> int:
    """Frames torch.compile compiles for ``fn`` over ``calls`` (argument tuples) on the cpu backend: MDT's
    masked pass changes the token count every step, so after one recompile the graph must be dynamic."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(fn, backend=counter)
    with mk.use_backend("cpu"):
        for args in calls:
            compiled(*args)
    return counter.frame_count


# (x shape, Dout) of linear and linear_gelu: 3-D, 2-D with 37 rows (2 full CPU row chunks of linear_gelu
# and a partial one), 1-D, one row, exactly 4 chunks, Dout/Din of 1, 3 and 17, a wider layer, and empty
# inputs (no rows).
LINEAR_SHAPES = [((2, 5, 17), 3), ((37, 17), 3), ((17,), 1), ((3,), 17), ((1, 1), 1), ((2, 3, 1), 3),
                 ((4, 16, 3), 17), ((37, 64), 48), ((0, 5), 3), ((2, 0, 5), 3)]


# Bad (x, weight, bias) arguments of linear and linear_gelu, each mutating good ones (x (4, 5), weight
# (3, 5), bias (3,), float32): (id, mutate, exception, message pattern).
LINEAR_BAD_INPUTS = [
    ("x 0-D", lambda x, w, b: (x[0, 0], w, b), ValueError, "x must have at least 1 dimension"),
    ("weight rank", lambda x, w, b: (x, w[0], b), ValueError, "weight must be 2-D"),
    ("bias rank", lambda x, w, b: (x, w, b[None]), ValueError, "bias must be 1-D"),
    ("Din mismatch", lambda x, w, b: (x[:, :4], w, b), ValueError, r"weight has shape \(3, 5\) but x has 4 input"),
    ("bias length", lambda x, w, b: (x, w, b[:2]), ValueError, "bias has 2 elements but weight has 3 output"),
    ("integer x", lambda x, w, b: (x.int(), w.int(), b.int()), TypeError, "x must be float32"),
    ("integer weight", lambda x, w, b: (x, w.long(), b), TypeError, "weight must be float32"),
    ("integer bias", lambda x, w, b: (x, w, b.int()), TypeError, "bias must be float32"),
    ("weight dtype", lambda x, w, b: (x, w.double(), b), TypeError, "one dtype"),
    ("bias dtype", lambda x, w, b: (x, w, b.half()), TypeError, "one dtype"),
    ("weight device", lambda x, w, b: (x, w.to("meta"), b), ValueError, "one device"),
    ("bias device", lambda x, w, b: (x, w, b.to("meta")), ValueError, "one device"),
    ("x not a tensor", lambda x, w, b: (x.tolist(), w, b), TypeError, "x must be a torch.Tensor"),
    ("weight not a tensor", lambda x, w, b: (x, 2.0, b), TypeError, "weight must be a torch.Tensor"),
    ("bias not a tensor", lambda x, w, b: (x, w, 1.0), TypeError, "bias must be a torch.Tensor"),
]


def assert_gradients_without_input_features(ref, act) -> None:
    """Din = 0 (the empty cases of test_empty.py) for ref(x, W, b) = act(x W^T + b): every output row is act(b), so
    db sums the cotangent's rows times act'(b), and x and W get zero gradients."""
    x, w = torch.randn(4, 0, dtype=torch.float64), torch.randn(3, 0, dtype=torch.float64)
    b, g = torch.randn(3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    _, (dx, dw, db) = forward_and_grads(ref, [x, w, b], [0, 1, 2], g)
    b64 = b.clone().requires_grad_()
    (slope,) = torch.autograd.grad(act(b64), b64, torch.ones_like(b64))
    assert dx.shape == (4, 0) and dw.shape == (3, 0)
    torch.testing.assert_close(db, (g * slope).sum(0))
