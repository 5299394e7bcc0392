"""Every op on empty inputs (B = 0, N = 0, K = 0, D = 0, H = 0, no output features), forward and backward, on
every backend that runs here, with uninitialised memory filled with NaN (torch fills every ``torch.empty``
with NaN, integer tensors with their maximum, under ``use_deterministic_algorithms`` with
``fill_uninitialized_memory``): a kernel skipped for an empty launch leaves NaN wherever its output was
not written some other way, and the comparison with the reference sees it.

The cases are the declared ops' example calls at sizes with one of them 0 (those calls with an empty tensor
among their arguments). The backward always runs, also when the output is empty (``autograd.grad`` with an
empty cotangent). When every output is empty, the reference's gradients must be zeros; each op's own tests
check the closed forms of its non-empty cases (a mask token or bias that is all that is left). Every
backend, the reference included, must give each differentiable input a gradient tensor, never None."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import DTYPES, TOL, backend_device_pairs, nan_filled_memory

import mdt_kernels as mk
from mdt_kernels import _registry

PAIRS = backend_device_pairs(("reference", "cpu", "cuda", "triton"))
BASE = _registry.Sizes(B=2, N=9, K=5, D=8, H=2, G=3)
EMPTY = {
    "B0": dict(B=0), "K0": dict(K=0), "N0": dict(N=0, K=0, G=0), "D0": dict(D=0), "H0": dict(H=0), "F0": dict(F=0),
    "B0N0": dict(B=0, N=0, K=0, G=0), "H0-full": dict(H=0, K=9),
}


def _has_empty(example: _registry.Example) -> bool:
    return any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in example.args)


def _cases() -> dict[str, tuple[str, _registry.Sizes, int]]:
    """id -> (op, sizes, index of the example call) for every example call with an empty tensor argument."""
    cases = {}
    for op, decl in sorted(_registry.all_ops().items()):
        for name, change in EMPTY.items():
            sizes = dataclasses.replace(BASE, **change)
            for i, ex in enumerate(decl.examples(sizes, torch.float32)):
                if _has_empty(ex) and ex.grad:
                    cases[f"{op}-{name}-{i}"] = (op, sizes, i)
    return cases


CASES = _cases()


@pytest.fixture(autouse=True)
def _nan_filled_memory():
    with nan_filled_memory():
        yield


def test_uninitialised_memory_is_nan():
    # The premise of this file: without it every check below would pass on garbage that happens to be 0.
    assert torch.isnan(torch.empty(64)).all() and torch.isnan(torch.zeros(2).new_empty(64)).all()


def test_every_differentiable_op_has_empty_cases():
    differentiable = {op for op, decl in _registry.all_ops().items()
                      if any(ex.grad for sizes in (BASE, dataclasses.replace(BASE, K=9))
                             for ex in decl.examples(sizes, torch.float32))}
    assert {op for op, _, _ in CASES.values()} == differentiable


def _run(backend, fn, inputs, wrt, cotangents=None):
    """Outputs (a tuple) and the gradients w.r.t. inputs[wrt], the backward run even when every output is
    empty. cotangents: one per output, else drawn here. Every input in wrt must get a gradient tensor, zeros
    where nothing reached it, never None: DDP expects a gradient for every parameter from every rank, also
    from one whose batch is empty."""
    leaves = [t.detach().requires_grad_(True) if i in wrt else t for i, t in enumerate(inputs)]
    with mk.use_backend(backend):
        outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if cotangents is None:
        cotangents = [torch.randn(o.shape, dtype=torch.float64).to(o.device, o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, [leaves[i] for i in wrt], cotangents, allow_unused=True)
    missing = [i for i, g in zip(wrt, grads) if g is None]
    assert not missing, f"{backend}: no gradient (None) for inputs {missing}"
    return [o.detach() for o in outs], list(grads), cotangents


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES)
def test_empty_matches_reference(case, dtype, backend, device):
    op, sizes, index = CASES[case]
    if not mk._dispatch.has_kernel(op, backend, device):  # rel_pos_attention: no CUDA kernel; linear: CPU only
        pytest.skip(f"{op} has no {backend} kernel")
    decl = _registry.get(op)
    ex = decl.examples(sizes, dtype)[index]
    inputs = [a.to(device) if isinstance(a, torch.Tensor) else a for a in ex.args]
    outs_ref, grads_ref, gs = _run("reference", decl.function, inputs, ex.grad)
    if all(o.numel() == 0 for o in outs_ref):  # nothing came out: nothing flows back
        for i, g in zip(ex.grad, grads_ref, strict=True):
            assert g.shape == inputs[i].shape and g.dtype == inputs[i].dtype
            assert not g.any(), f"gradient of input {i}"
    if backend == "reference":
        return
    outs, grads, _ = _run(backend, decl.function, inputs, ex.grad, gs)
    for name, got, ref in [(f"output {k}", o, r) for k, (o, r) in enumerate(zip(outs, outs_ref, strict=True))] + [
        (f"gradient of input {i}", g, r) for i, g, r in zip(ex.grad, grads, grads_ref, strict=True)
    ]:
        assert got.shape == ref.shape and got.dtype == ref.dtype, (name, got.shape, ref.shape, got.dtype, ref.dtype)
        torch.testing.assert_close(got, ref, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")
