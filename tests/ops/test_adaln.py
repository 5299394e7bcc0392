"""The adaLN family: adaln_modulate (modulate step), gated_residual (residual step) and
residual_adaln_modulate (both), each test parametrised over the variant (VARIANTS)."""

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    CPU_BACKENDS,
    DTYPES,
    MOD_LAYOUTS,
    assert_close,
    assert_close_fp32,
    assert_close_to_ref,
    assert_same_for_thread_counts,
    backend_device_pairs,
    compiled_backends,
    is_interpreted,
    modulation,
    op_namespace,
    property_settings,
    strided,
)
from hypothesis import given
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops import adaln
from mdt_kernels.ops.adaln import adaln_modulate_ref, gated_residual_ref, residual_adaln_modulate_ref

PAIRS = backend_device_pairs()
EPS = 1e-6


def eager_modulate(x, shift, scale):
    """DiT/MDT's modulate(norm(x), shift, scale), evaluated in the inputs' dtype."""
    return F.layer_norm(x, (x.shape[-1],), eps=EPS) * (1 + scale[:, None]) + shift[:, None]


def eager_residual(x, gate, y):
    return x + gate[:, None] * y


def eager_both(x, gate, y, shift, scale):
    h = eager_residual(x, gate, y)
    return h, eager_modulate(h, shift, scale)


class Variant(NamedTuple):
    op: str
    residual: bool  # takes (gate, y) after x
    modulate: bool  # takes (shift, scale) last, and eps
    public: object
    ref: object
    eager: object
    names: tuple  # outputs, then the input gradients
    x_scale: float  # x = x_scale * randn + x_offset
    x_offset: float

    def call(self, *t):
        """The public function on inputs t, its outputs as a tuple."""
        out = self.public(*t, eps=EPS) if self.modulate else self.public(*t)
        return out if isinstance(out, tuple) else (out,)

    def call_ref(self, *t):
        out = self.ref(*t, EPS) if self.modulate else self.ref(*t)
        return out if isinstance(out, tuple) else (out,)

    def call_eager(self, *t):
        out = self.eager(*t)
        return out if isinstance(out, tuple) else (out,)

    @property
    def n_out(self):
        return 2 if self.residual and self.modulate else 1

    def ops(self, backend):
        """The registered (forward, backward) ops of backend."""
        if backend == "triton":
            return (getattr(torch.ops.mdt_kernels, f"{self.op}_triton"),
                    getattr(torch.ops.mdt_kernels, f"{self.op}_backward_triton"))
        ns = op_namespace(backend)
        return getattr(ns, self.op), getattr(ns, f"{self.op}_backward")


VARIANTS = {
    "adaln_modulate": Variant("adaln_modulate", False, True, mk.adaln_modulate, adaln_modulate_ref, eager_modulate,
                              ("out", "dx", "dshift", "dscale"), 1.5, 0.3),
    "gated_residual": Variant("gated_residual", True, False, mk.gated_residual, gated_residual_ref, eager_residual,
                              ("out", "dx", "dgate", "dy"), 1.0, 0.0),
    "residual_adaln_modulate": Variant("residual_adaln_modulate", True, True, mk.residual_adaln_modulate,
                                       residual_adaln_modulate_ref, eager_both,
                                       ("h", "out", "dx", "dgate", "dy", "dshift", "dscale"), 1.0, 0.3),
}
ALL = pytest.mark.parametrize("v", VARIANTS.values(), ids=VARIANTS.keys())
WITH_EPS = pytest.mark.parametrize("v", [v for v in VARIANTS.values() if v.modulate],
                                   ids=[k for k, v in VARIANTS.items() if v.modulate])


def arrange(v, x, y, shift, scale, gate):
    """The inputs of v in its argument order."""
    return [x] + ([gate, y] if v.residual else []) + ([shift, scale] if v.modulate else [])


def make(v, B, N, D, dtype, device, layout="chunk"):
    """Inputs of v (gate, shift, scale from one adaLN_modulation-like tensor) and one gradient per output."""
    x = v.x_scale * torch.randn(B, N, D, dtype=dtype, device=device) + v.x_offset
    y = torch.randn(B, N, D, dtype=dtype, device=device) if v.residual else None
    mods = modulation(B, D, 2 * v.modulate + v.residual, dtype, device, layout)
    shift, scale = mods[:2] if v.modulate else (None, None)
    gate = mods[-1] if v.residual else None
    grads = [torch.randn(B, N, D, dtype=dtype, device=device) for _ in range(v.n_out)]
    return arrange(v, x, y, shift, scale, gate), grads


def forward_backward(fn, inputs, grads):
    """fn(*inputs) -> outputs and the gradients of every input given one gradient per output, on leaf
    copies that keep the inputs' strides. A None in grads leaves that output out of the backward."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    used = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
    partial = len(used) < len(outs)
    dinputs = torch.autograd.grad(
        [o for o, _ in used], leaves, [g for _, g in used], allow_unused=partial, materialize_grads=partial
    )
    return [o.detach() for o in outs] + list(dinputs)


def run(v, backend, inputs, grads):
    with mk.use_backend(backend):
        return forward_backward(v.call, inputs, grads)


def check(v, backend, inputs, grads, dtype):
    """Every output against the fp64 reference: fp32 within TOL (per-sample sums: assert_close_fp32),
    fp16/bf16 within twice eager's error."""
    got = run(v, backend, inputs, grads)
    ref = forward_backward(v.call_ref, [t.double() for t in inputs], [g.double() if g is not None else None
                                                                      for g in grads])
    low = forward_backward(v.call_eager, inputs, grads)
    for name, a, r, e in zip(v.names, got, ref, low, strict=True):
        if dtype == torch.float32:
            assert_close_fp32(a, r, e, name)
        else:
            assert_close_to_ref(a, r, e, name)


# Non-powers of two, a single feature, rows longer than one Triton block (4097), empty batches/tokens,
# several token chunks per sample (N=70).
SHAPES = [(2, 5, 1), (2, 7, 3), (3, 9, 97), (2, 3, 1152), (1, 2, 4097), (2, 70, 24), (0, 4, 8), (2, 0, 8), (1, 1, 5)]


@ALL
@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_matches_reference(v, backend, device, dtype, B, N, D):
    if is_interpreted(backend, device):
        N = min(N, 9)  # the interpreter runs ~1 ms per program; Triton chunks are 4 tokens at these sizes
    inputs, grads = make(v, B, N, D, dtype, device)
    check(v, backend, inputs, grads, dtype)


@ALL
@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(v, backend, device):
    interpreted = is_interpreted(backend, device)

    @property_settings(backend, device)
    @given(
        B=st.integers(0, 3), N=st.integers(0, 6 if interpreted else 40), D=st.sampled_from([1, 3, 16, 97, 130]),
        dtype=st.sampled_from(list(DTYPES.values())), layout=st.sampled_from(MOD_LAYOUTS),
        strided_x=st.booleans(), strided_y=st.booleans(),
        used=st.sampled_from(["both", "h", "out"] if v.n_out == 2 else ["both"]),
    )
    def prop(B, N, D, dtype, layout, strided_x, strided_y, used):
        inputs, grads = make(v, B, N, D, dtype, device, layout)
        if strided_x:
            inputs[0] = strided(inputs[0])
        if strided_y:  # y (when the variant takes it) and the gradient of the last output
            if v.residual:
                inputs[2] = strided(inputs[2])
            grads[-1] = strided(grads[-1])
        if used != "both":  # one output unused: its gradient is None, not zeros
            grads[0 if used == "out" else 1] = None
        check(v, backend, inputs, grads, dtype)

    prop()


@ALL
@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p.values[0] == "triton"])
def test_triton_multi_block_rows(v, backend, device, monkeypatch):
    # Rows longer than a block take the looped path (partials accumulated in the program's slot).
    monkeypatch.setattr(adaln, "MAX_BLOCK_D", 16)
    inputs, grads = make(v, 2, 5, 37, torch.float32, device)
    check(v, backend, inputs, grads, torch.float32)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_equals_composition(backend, device):
    # Statistics come from h as stored (rounded to bf16), so out is adaln_modulate of the returned h.
    (x, gate, y, shift, scale), _ = make(VARIANTS["residual_adaln_modulate"], 2, 9, 33, torch.bfloat16, device)
    with mk.use_backend(backend):
        h, out = mk.residual_adaln_modulate(x, gate, y, shift, scale)
        out_from_h = mk.adaln_modulate(h, shift, scale)
    torch.testing.assert_close(out, out_from_h, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_only_x_needs_grad(backend, device):
    (x, gate, y), (g,) = make(VARIANTS["gated_residual"], 2, 5, 7, torch.float32, device)
    x.requires_grad_(True)
    with mk.use_backend(backend):
        (dx,) = torch.autograd.grad(mk.gated_residual(x, gate, y), x, g)
    assert torch.equal(dx, g)


@ALL
@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_large_call_streaming_stores(v):
    # Calls moving more than 8 MiB write fp32 outputs with streaming stores; an odd D leaves rows
    # unaligned, exercising the aligned body and both scalar edges.
    inputs, grads = make(v, 3, 400, 1151, torch.float32, "cpu")
    check(v, "cpu", inputs, grads, torch.float32)


@ALL
@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_backward_is_deterministic(v):
    # Per-sample sums use fixed token chunks reduced in order: bitwise equal for any thread count.
    inputs, grads = make(v, 3, 100, 40, torch.float32, "cpu")
    assert_same_for_thread_counts(lambda: run(v, "cpu", inputs, grads))


@ALL
@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference",) + ("cpu", "cuda", "triton")))
def test_gradcheck(v, backend, device):
    inputs, _ = make(v, 2, 4 if v.n_out == 2 else 5, 3, torch.float64, device)
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(v.call, leaves, fast_mode=is_interpreted(backend, device))


def backward_args(v, inputs, fwd_out, grads):
    """Argument lists of v's registered backward op, from the forward's inputs and outputs."""
    if v.op == "adaln_modulate":
        x, _, scale = inputs
        _, mean, rstd = fwd_out
        return [(grads[0], x, scale, mean, rstd)]
    if v.op == "gated_residual":
        _, gate, y = inputs
        return [(grads[0], gate, y)]
    _, gate, y, _, scale = inputs
    h, _, mean, rstd = fwd_out
    return [(gh, grads[1], h, y, gate, scale, mean, rstd) for gh in (grads[0], None)]


@ALL
@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(v, backend, device):
    fwd, bwd = v.ops(backend)
    eps = (EPS,) if v.modulate else ()
    for dtype in (torch.float32, torch.float16):
        inputs, grads = make(v, 2, 6, 5, dtype, device)
        x, first_mod, *rest = inputs  # first_mod: shift or gate
        torch.library.opcheck(fwd, (x.requires_grad_(), first_mod.requires_grad_(), *rest, *eps))
        inputs = [t.detach() for t in inputs]
        torch.library.opcheck(fwd, (*inputs, *eps))
        fwd_out = fwd(*inputs, *eps)
        for args in backward_args(v, inputs, fwd_out if isinstance(fwd_out, tuple) else (fwd_out,), grads):
            torch.library.opcheck(bwd, args)


@ALL
@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(v, backend, device):
    torch.compiler.reset()  # one code object f for every variant: no recompile limit across the params
    x = torch.randn(2, 6, 5, device=device, requires_grad=True)
    y = torch.randn(2, 6, 5, device=device, requires_grad=True)
    mod = torch.randn(2, 30, device=device, requires_grad=True)
    gs = [torch.randn(2, 6, 5, device=device) for _ in range(v.n_out)]

    def f(x, mod, y, op):
        shift, scale, gate = mod.chunk(6, dim=1)[:3]
        outs = op(*arrange(v, x * 2, y.sin(), shift, scale, gate))
        return [o.sin() for o in outs]

    wrt = (x, mod, y) if v.residual else (x, mod)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    with mk.use_backend(backend):
        outs = compiled(x, mod, y, v.call)
        grads = torch.autograd.grad(outs, wrt, gs)
    outs_ref = f(x, mod, y, v.call_ref)
    grads_ref = torch.autograd.grad(outs_ref, wrt, gs)
    for a, r in zip([*outs, *grads], [*outs_ref, *grads_ref], strict=True):
        assert_close(a, r)


def _mutated(i, fn):
    """Applies fn to input i."""
    return lambda *t: tuple(fn(u) if j == i else u for j, u in enumerate(t))


BAD = {
    "adaln_modulate": [  # (x, shift, scale)
        ("x rank", _mutated(0, lambda t: t[0]), ValueError, "x must be 3-D"),
        ("shift rank", _mutated(1, lambda t: t[0]), ValueError, "shift must be 2-D"),
        ("scale shape", _mutated(2, lambda t: t[:1]), ValueError, r"scale must have shape \(B, D\) = \(2, 5\)"),
        ("shift width", _mutated(1, lambda t: t[:, :4]), ValueError, r"shift must have shape \(B, D\)"),
        ("dtype mix", _mutated(1, lambda t: t.double()), TypeError, "one dtype"),
        ("low precision mix", _mutated(0, lambda t: t.bfloat16()), TypeError, "one dtype"),
        ("integer x", lambda *t: tuple(u.long() for u in t), TypeError, "x must be float32"),
        ("integer scale", _mutated(2, lambda t: t.int()), TypeError, "one dtype"),
        ("devices", _mutated(1, lambda t: t.to("meta")), ValueError, "one device"),
        ("not a tensor", _mutated(1, lambda t: t.tolist()), TypeError, "shift must be a torch.Tensor"),
    ],
    "gated_residual": [  # (x, gate, y)
        ("x rank", _mutated(0, lambda t: t[0]), ValueError, "x must be 3-D"),
        ("gate rank", _mutated(1, lambda t: t[0]), ValueError, "gate must be 2-D"),
        ("gate shape", _mutated(1, lambda t: t[:1]), ValueError, r"gate must have shape \(B, D\) = \(2, 5\)"),
        ("y shape", _mutated(2, lambda t: t[:, :3]), ValueError, r"y must have shape \(B, N, D\) like x"),
        ("y rank", _mutated(2, lambda t: t[0]), ValueError, "y must be 3-D"),
        ("dtype mix", _mutated(2, lambda t: t.half()), TypeError, "one dtype"),
        ("integer x", lambda *t: tuple(u.int() for u in t), TypeError, "x must be float32"),
        ("integer gate", _mutated(1, lambda t: t.long()), TypeError, "one dtype"),
        ("devices", _mutated(2, lambda t: t.to("meta")), ValueError, "one device"),
        ("not a tensor", _mutated(1, lambda t: 0.5), TypeError, "gate must be a torch.Tensor"),
    ],
    "residual_adaln_modulate": [  # (x, gate, y, shift, scale)
        ("x rank", _mutated(0, lambda t: t[0]), ValueError, "x must be 3-D"),
        ("y shape", _mutated(2, lambda t: t[:, :2]), ValueError, r"y must have shape \(B, N, D\) like x"),
        ("gate shape", _mutated(1, lambda t: t[:1]), ValueError, r"gate must have shape \(B, D\) = \(2, 5\)"),
        ("shift rank", _mutated(3, lambda t: t[0]), ValueError, "shift must be 2-D"),
        ("scale width", _mutated(4, lambda t: t[:, :3]), ValueError, r"scale must have shape \(B, D\)"),
        ("dtype mix", _mutated(4, lambda t: t.double()), TypeError, "one dtype"),
        ("low precision mix", _mutated(2, lambda t: t.bfloat16()), TypeError, "one dtype"),
        ("integer x", lambda *t: tuple(u.long() for u in t), TypeError, "x must be float32"),
        ("devices", _mutated(3, lambda t: t.to("meta")), ValueError, "one device"),
        ("not a tensor", _mutated(1, lambda t: t.tolist()), TypeError, "gate must be a torch.Tensor"),
    ],
}
BAD_CASES = [pytest.param(VARIANTS[op], *case, id=f"{op}-{case[0]}") for op, cases in BAD.items() for case in cases]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("v,case,mutate,exc,match", BAD_CASES)
def test_bad_input_raises(backend, v, case, mutate, exc, match):
    inputs, _ = make(v, 2, 6, 5, torch.float32, "cpu")
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        v.public(*mutate(*inputs))


@WITH_EPS
@pytest.mark.parametrize("eps,exc", [(-1.0, ValueError), (-1e-6, ValueError), (float("nan"), ValueError),
                                     ("1e-6", TypeError)])
def test_bad_eps_raises(v, eps, exc):
    inputs, _ = make(v, 2, 6, 5, torch.float32, "cpu")
    with pytest.raises(exc, match="eps"):
        v.public(*inputs, eps=eps)


# The registered C++ ops are callable directly (and from compiled graphs): they check before reading.
# Per variant: (exception, message, call) with call(op, bwd, inputs, grads, fwd outputs).
CPP_CHECKS = {
    "adaln_modulate": [
        (ValueError, "shift must have shape", lambda op, bwd, t, g, o: op(t[0], t[1][:1], t[2], EPS)),
        (TypeError, "scale has dtype", lambda op, bwd, t, g, o: op(t[0], t[1], t[2].double(), EPS)),
        (TypeError, "x must be float32", lambda op, bwd, t, g, o: op(*(u.long() for u in t), EPS)),
        (ValueError, "eps", lambda op, bwd, t, g, o: op(*t, -1.0)),
        (ValueError, "mean must have shape", lambda op, bwd, t, g, o: bwd(g[0], t[0], t[2], o[1][:1], o[2])),
        (TypeError, "rstd must be Float", lambda op, bwd, t, g, o: bwd(g[0], t[0], t[2], o[1], o[2].double())),
        (ValueError, "grad must have the shape", lambda op, bwd, t, g, o: bwd(g[0][:, :2], t[0], t[2], o[1], o[2])),
    ],
    "gated_residual": [
        (ValueError, "gate must have shape", lambda op, bwd, t, g, o: op(t[0], t[1][:1], t[2])),
        (ValueError, "y must have the shape of x", lambda op, bwd, t, g, o: op(t[0], t[1], t[2][:1])),
        (TypeError, "y has dtype", lambda op, bwd, t, g, o: op(t[0], t[1], t[2].double())),
        (TypeError, "x must be float32", lambda op, bwd, t, g, o: op(*(u.long() for u in t))),
        (ValueError, "grad must have the shape", lambda op, bwd, t, g, o: bwd(g[0][:1], t[1], t[2])),
    ],
    "residual_adaln_modulate": [
        (ValueError, "shift must have shape", lambda op, bwd, t, g, o: op(t[0], t[1], t[2], t[3][:1], t[4], EPS)),
        (TypeError, "gate has dtype", lambda op, bwd, t, g, o: op(t[0], t[1].half(), *t[2:], EPS)),
        (ValueError, "y must have the shape of x", lambda op, bwd, t, g, o: op(t[0], t[1], t[2][:, :1], *t[3:], EPS)),
        (ValueError, "grad_h must have the shape",
         lambda op, bwd, t, g, o: bwd(g[0][:1], g[1], o[0], t[2], t[1], t[4], o[2], o[3])),
        (ValueError, "rstd must have shape",
         lambda op, bwd, t, g, o: bwd(g[0], g[1], o[0], t[2], t[1], t[4], o[2], o[3][:, :2])),
    ],
}
CPP_CASES = [pytest.param(VARIANTS[op], *case, id=f"{op}-{case[1]}") for op, cases in CPP_CHECKS.items()
             for case in cases]


@pytest.mark.parametrize("backend", compiled_backends())
@pytest.mark.parametrize("v,exc,match,call", CPP_CASES)
def test_cpp_op_checks_inputs_itself(backend, v, exc, match, call):
    inputs, grads = make(v, 2, 6, 5, torch.float32, "cpu")
    op, bwd = v.ops(backend)
    out = op(*inputs, *((EPS,) if v.modulate else ()))
    with pytest.raises(exc, match=match):
        call(op, bwd, inputs, grads, out if isinstance(out, tuple) else (out,))


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_inference_form_checks_its_input():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="eps"):
        torch.ops.mdt_kernels.adaln_modulate_inference(x, torch.zeros(2, 4), torch.zeros(2, 4), -1.0)
    with pytest.raises(ValueError, match="scale must have shape"):
        torch.ops.mdt_kernels.residual_adaln_modulate_inference(x, torch.zeros(2, 4), x, torch.zeros(2, 4),
                                                                torch.zeros(1, 4), 1e-6)
