"""Every op on empty inputs (B = 0, N = 0, K = 0, D = 0, no rows, no features), forward and backward, on
every backend that runs here, with uninitialised memory filled with NaN (torch fills every ``torch.empty``
with NaN, integer tensors with their maximum, under ``use_deterministic_algorithms`` with
``fill_uninitialized_memory``): a kernel skipped for an empty launch leaves NaN wherever its output was
not written some other way, and the comparison with the reference sees it.

The backward always runs, also when the output is empty (``autograd.grad`` with an empty cotangent), and
the reference's gradients are checked against what they must be: zeros of the input's shape when the
output is empty, else the closed forms given per case (a mask token or bias that is all that is left).
Every backend, the reference included, must give each differentiable input a gradient tensor, never None."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, TOL, backend_device_pairs

import mdt_kernels as mk
from mdt_kernels.ops import adan as adan_ops

PAIRS = backend_device_pairs(("reference", "cpu", "cuda", "triton"))


@pytest.fixture(autouse=True)
def _nan_filled_memory():
    """torch.empty (and new_empty, empty_like, ... on CPU and CUDA) returns NaN-filled memory."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def test_uninitialised_memory_is_nan():
    # The premise of this file: without it every check below would pass on garbage that happens to be 0.
    assert torch.isnan(torch.empty(64)).all() and torch.isnan(torch.zeros(2).new_empty(64)).all()


def _ids(B, K, N, device):
    """(B, K) distinct positions in [0, N) per row."""
    if B == 0 or K == 0:
        return torch.zeros(B, K, dtype=torch.long, device=device)
    return torch.stack([torch.randperm(N)[:K] for _ in range(B)]).to(device)


def _rand(*shape, dtype, device):
    return torch.randn(*shape, dtype=torch.float64).to(device, dtype)


# ---------------------------------------------------------------------------------------------------
# Cases: id -> build(dtype, device) returning (fn, inputs, wrt, exact). fn(*inputs) is the op (a tensor or
# a tuple of them), wrt the indices of the differentiable inputs, and exact(inputs, cotangents) the
# gradients the reference must give when the output is not empty (None: every output is empty, so every
# gradient is zero).


def gather_case(B, N, D, K):
    def build(dtype, device):
        x = _rand(B, N, D, dtype=dtype, device=device)
        ids = torch.randint(0, max(N, 1), (B, K), device=device)
        return mk.gather_tokens, [x, ids], [0], None

    return build


def unmask_case(B, N, D, K, pos):
    def build(dtype, device):
        xk, mask = _rand(B, K, D, dtype=dtype, device=device), _rand(D, dtype=dtype, device=device)
        pe = _rand(N, D, dtype=dtype, device=device) if pos else None

        def exact(inputs, gs):  # K = 0: every position is the mask token (plus pos_embed)
            (g,) = gs
            grads = [torch.zeros_like(inputs[0]), g.double().sum((0, 1))]
            return grads + ([g.double().sum(0)] if pos else [])

        fn = lambda xk, ids, m, pe=None: mk.unmask_tokens(xk, ids, m, N, pe)  # noqa: E731
        return fn, [xk, _ids(B, K, N, device), mask] + ([pe] if pos else []), [0, 2] + ([3] if pos else []), exact

    return build


def rel_bias_case(G, H, B, K, extra=2, full=False):
    def build(dtype, device):
        table = _rand((2 * G - 1) ** 2 + extra, H, dtype=dtype, device=device)
        if full:
            return (lambda t: mk.masked_rel_pos_bias(t, G)), [table], [0], None
        return (lambda t, ids: mk.masked_rel_pos_bias(t, G, ids)), [table, _ids(B, K, G * G, device)], [0], None

    return build


def attention_case(G, H, B, K, Dh, extra=2, scale=0.5):
    def build(dtype, device):
        qkv = _rand(B, K, 3, H, Dh, dtype=dtype, device=device)
        table = _rand((2 * G - 1) ** 2 + extra, H, dtype=dtype, device=device)
        fn = lambda qkv, t, ids: mk.rel_pos_attention(qkv, t, G, ids, scale=scale)  # noqa: E731
        return fn, [qkv, table, _ids(B, K, G * G, device)], [0, 1], None

    return build


def linear_case(x_shape, dout, gelu, bias=True):
    def build(dtype, device):
        x = _rand(*x_shape, dtype=dtype, device=device)
        w = _rand(dout, x_shape[-1], dtype=dtype, device=device)
        b = _rand(dout, dtype=dtype, device=device) if bias else None

        def exact(inputs, gs):  # Din = 0: every row is act(b) (0 without a bias)
            (g,) = gs
            if not bias:
                return [torch.zeros_like(inputs[0]), torch.zeros_like(inputs[1])]
            b64 = inputs[2].detach().double().requires_grad_()
            act = F.gelu(b64, approximate="tanh") if gelu else b64
            (slope,) = torch.autograd.grad(act, b64, torch.ones_like(b64))
            db = (g.double().reshape(-1, dout) * slope).sum(0)
            return [torch.zeros_like(inputs[0]), torch.zeros_like(inputs[1])] + ([db] if bias else [])

        op = mk.linear_gelu if gelu else mk.linear
        return op, [x, w, b] if bias else [x, w], [0, 1, 2] if bias else [0, 1], exact

    return build


def adaln_case(op, B, N, D):
    def build(dtype, device):
        x = _rand(B, N, D, dtype=dtype, device=device)
        mods = [_rand(B, D, dtype=dtype, device=device) for _ in range(3)]
        if op == "adaln_modulate":
            return mk.adaln_modulate, [x, mods[0], mods[1]], [0, 1, 2], None
        y = _rand(B, N, D, dtype=dtype, device=device)
        if op == "gated_residual":
            return mk.gated_residual, [x, mods[0], y], [0, 1, 2], None
        return mk.residual_adaln_modulate, [x, mods[0], y, mods[1], mods[2]], [0, 1, 2, 3, 4], None

    return build


CASES = {
    "gather_tokens-B0": gather_case(0, 5, 4, 3),
    "gather_tokens-K0": gather_case(2, 5, 4, 0),
    "gather_tokens-N0K0": gather_case(2, 0, 4, 0),
    "gather_tokens-D0": gather_case(2, 5, 0, 3),
    "unmask_tokens-B0": unmask_case(0, 5, 4, 3, pos=True),
    "unmask_tokens-B0-nopos": unmask_case(0, 5, 4, 3, pos=False),
    "unmask_tokens-K0": unmask_case(2, 5, 4, 0, pos=True),
    "unmask_tokens-K0-nopos": unmask_case(2, 5, 4, 0, pos=False),
    "unmask_tokens-N0": unmask_case(2, 0, 4, 0, pos=True),
    "unmask_tokens-D0": unmask_case(2, 5, 0, 3, pos=True),
    "masked_rel_pos_bias-B0": rel_bias_case(3, 2, 0, 4),
    "masked_rel_pos_bias-K0": rel_bias_case(3, 2, 2, 0),
    "masked_rel_pos_bias-H0": rel_bias_case(3, 0, 2, 4),
    "masked_rel_pos_bias-H0-full": rel_bias_case(2, 0, 1, 4, full=True),
    "rel_pos_attention-B0": attention_case(3, 2, 0, 4, 8),
    "rel_pos_attention-K0": attention_case(3, 2, 2, 0, 8),
    "rel_pos_attention-H0": attention_case(3, 0, 2, 4, 8),
    "rel_pos_attention-Dh0": attention_case(3, 2, 2, 4, 0),
    "rel_pos_attention-Dh0-default-scale": attention_case(3, 2, 2, 4, 0, scale=None),
    "linear-M0": linear_case((0, 5), 3, gelu=False),
    "linear-B0-3d": linear_case((0, 4, 5), 3, gelu=False),
    "linear-N0-3d": linear_case((2, 0, 5), 3, gelu=False),
    "linear-Din0": linear_case((4, 0), 3, gelu=False),
    "linear-Din0-nobias": linear_case((4, 0), 3, gelu=False, bias=False),
    "linear-Dout0": linear_case((4, 5), 0, gelu=False),
    "linear-M0-nobias": linear_case((0, 5), 3, gelu=False, bias=False),
    "linear_gelu-M0": linear_case((0, 5), 3, gelu=True),
    "linear_gelu-N0-3d": linear_case((2, 0, 5), 3, gelu=True),
    "linear_gelu-Din0": linear_case((4, 0), 3, gelu=True),
    "linear_gelu-Din0-3d": linear_case((2, 3, 0), 3, gelu=True),
    "linear_gelu-Dout0": linear_case((4, 5), 0, gelu=True),
    "linear_gelu-all0": linear_case((0, 0), 0, gelu=True),
}
for _op in ("adaln_modulate", "gated_residual", "residual_adaln_modulate"):
    CASES.update({f"{_op}-B0": adaln_case(_op, 0, 4, 8), f"{_op}-N0": adaln_case(_op, 2, 0, 8),
                  f"{_op}-D0": adaln_case(_op, 2, 4, 0), f"{_op}-B0N0": adaln_case(_op, 0, 0, 8)})

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
        cotangents = [_rand(*o.shape, dtype=o.dtype, device=o.device) for o in outs]
    grads = torch.autograd.grad(outs, [leaves[i] for i in wrt], cotangents, allow_unused=True)
    missing = [i for i, g in zip(wrt, grads) if g is None]
    assert not missing, f"{backend}: no gradient (None) for inputs {missing}"
    return [o.detach() for o in outs], list(grads), cotangents


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES)
def test_empty_matches_reference(case, dtype, backend, device):
    op = case.split("-")[0]
    if not mk._dispatch.has_kernel(op, backend, device):  # rel_pos_attention: no CUDA kernel; linear: CPU only
        pytest.skip(f"{op} has no {backend} kernel")
    fn, inputs, wrt, exact = CASES[case](dtype, device)
    outs_ref, grads_ref, gs = _run("reference", fn, inputs, wrt)
    # The reference is right: zero gradients when nothing came out, else the closed form.
    if all(o.numel() == 0 for o in outs_ref):
        want = [torch.zeros_like(inputs[i], dtype=torch.float64) for i in wrt]
    else:
        assert exact is not None, "a case with a non-empty output needs its closed form"
        want = exact(inputs, gs)
    for i, g, w in zip(wrt, grads_ref, want, strict=True):
        assert g.shape == inputs[i].shape and g.dtype == inputs[i].dtype
        torch.testing.assert_close(g.double(), w.double().cpu().to(g.device), **TOL[dtype])
    if backend == "reference":
        return
    outs, grads, _ = _run(backend, fn, inputs, wrt, gs)
    for name, got, ref in [(f"output {k}", o, r) for k, (o, r) in enumerate(zip(outs, outs_ref, strict=True))] + [
        (f"gradient of input {i}", g, r) for i, g, r in zip(wrt, grads, grads_ref, strict=True)
    ]:
        assert got.shape == ref.shape and got.dtype == ref.dtype, (name, got.shape, ref.shape, got.dtype, ref.dtype)
        torch.testing.assert_close(got, ref, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------
# adan_step: no backward; empty parameter lists and empty parameters among others.

ADAN_SHAPES = {"empty-list": [], "all-empty": [(0,), (3, 0)], "mixed": [(0,), (5,), (2, 0, 4), (3, 3)]}


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shapes", ADAN_SHAPES.values(), ids=ADAN_SHAPES.keys())
@pytest.mark.parametrize("first", [True, False], ids=["first", "later"])
def test_adan_step_empty(shapes, dtype, backend, device, first):
    def state():
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        grads = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        states = [[torch.rand(s, generator=gen).to(device) for s in shapes] for _ in adan_ops.STATE_NAMES]
        return params, grads, states

    got, want = state(), state()
    step = 1 if first else 3
    kw = dict(lr=1e-2, step=step, weight_decay=0.1)
    mk.adan_step(got[0], got[1], *got[2], backend=backend, **kw)
    mk.adan_step(want[0], want[1], *want[2], backend="reference", **kw)
    for a, b in zip([got[0]] + got[2], [want[0]] + want[2], strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.shape == y.shape and not x.isnan().any()
            torch.testing.assert_close(x, y, **TOL[x.dtype])
    initial = state()[0]
    assert all(not torch.equal(x, x0) for x, x0 in zip(got[0], initial, strict=True) if x.numel() > 0), \
        "the non-empty parameters took no step"
