import pytest
import torch
import torch.nn.functional as F
from helpers import (
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
from mdt_kernels.ops import _adaln
from mdt_kernels.ops.residual_adaln_modulate import residual_adaln_modulate_ref

PAIRS = backend_device_pairs()
EPS = 1e-6
NAMES = ("h", "out", "dx", "dgate", "dy", "dshift", "dscale")


def eager(x, gate, y, shift, scale):
    """The two steps as DiT/MDT code writes them, evaluated in the inputs' dtype."""
    h = x + gate[:, None] * y
    return h, F.layer_norm(h, (h.shape[-1],), eps=EPS) * (1 + scale[:, None]) + shift[:, None]


def forward_backward(fn, inputs, grads):
    """fn(*inputs) -> (h, out) and the gradients of every input given (dh, dout); leaf copies keep strides.
    A None in grads leaves that output out of the backward."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    used = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
    dinputs = torch.autograd.grad(
        [o for o, _ in used], leaves, [g for _, g in used], allow_unused=True, materialize_grads=True
    )
    return [o.detach() for o in outs] + list(dinputs)


def run(backend, inputs, grads):
    with mk.use_backend(backend):
        return forward_backward(lambda *t: mk.residual_adaln_modulate(*t, eps=EPS), inputs, grads)


def check(backend, inputs, grads, dtype):
    """Every output against the fp64 reference: fp32 within TOL (per-sample sums: assert_close_fp32),
    fp16/bf16 within twice eager's error."""
    got = run(backend, inputs, grads)
    ref = forward_backward(
        lambda *t: residual_adaln_modulate_ref(*t, EPS), [t.double() for t in inputs],
        [g.double() if g is not None else None for g in grads],
    )
    low = forward_backward(eager, inputs, grads)
    for name, a, r, e in zip(NAMES, got, ref, low, strict=True):
        if dtype == torch.float32:
            assert_close_fp32(a, r, e, name)
        else:
            assert_close_to_ref(a, r, e, name)


def make(B, N, D, dtype, device, layout="chunk"):
    x = torch.randn(B, N, D, dtype=dtype, device=device) + 0.3
    y = torch.randn(B, N, D, dtype=dtype, device=device)
    shift, scale, gate = modulation(B, D, 3, dtype, device, layout)
    grads = [torch.randn(B, N, D, dtype=dtype, device=device) for _ in range(2)]
    return [x, gate, y, shift, scale], grads


SHAPES = [(2, 5, 1), (2, 7, 3), (3, 9, 97), (2, 3, 1152), (1, 2, 4097), (2, 70, 24), (0, 4, 8), (2, 0, 8), (1, 1, 5)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_matches_reference(backend, device, dtype, B, N, D):
    if is_interpreted(backend, device):
        N = min(N, 9)  # the interpreter runs ~1 ms per program
    inputs, grads = make(B, N, D, dtype, device)
    check(backend, inputs, grads, dtype)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    interpreted = is_interpreted(backend, device)

    @property_settings(backend, device)
    @given(
        B=st.integers(0, 3), N=st.integers(0, 6 if interpreted else 40), D=st.sampled_from([1, 3, 16, 97, 130]),
        dtype=st.sampled_from(list(DTYPES.values())), layout=st.sampled_from(MOD_LAYOUTS),
        strided_xy=st.booleans(), used=st.sampled_from(["both", "h", "out"]),
    )
    def prop(B, N, D, dtype, layout, strided_xy, used):
        inputs, grads = make(B, N, D, dtype, device, layout)
        if strided_xy:
            inputs[0], inputs[2], grads[1] = strided(inputs[0]), strided(inputs[2]), strided(grads[1])
        if used != "both":  # one output unused: its gradient is None, not zeros
            grads[0 if used == "out" else 1] = None
        check(backend, inputs, grads, dtype)

    prop()


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p.values[0] == "triton"])
def test_triton_multi_block_rows(backend, device, monkeypatch):
    monkeypatch.setattr(_adaln, "MAX_BLOCK_D", 16)
    inputs, grads = make(2, 5, 37, torch.float32, device)
    check(backend, inputs, grads, torch.float32)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_equals_composition(backend, device):
    # Statistics come from h as stored (rounded to bf16), so out is adaln_modulate of the returned h.
    (x, gate, y, shift, scale), _ = make(2, 9, 33, torch.bfloat16, device)
    with mk.use_backend(backend):
        h, out = mk.residual_adaln_modulate(x, gate, y, shift, scale)
        out_from_h = mk.adaln_modulate(h, shift, scale)
    torch.testing.assert_close(out, out_from_h, atol=0, rtol=0)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_large_call_streaming_stores():
    # Calls moving more than 8 MiB write fp32 outputs with streaming stores; an odd D leaves rows
    # unaligned, exercising the aligned body and both scalar edges.
    inputs, g = make(3, 400, 1151, torch.float32, "cpu")
    check("cpu", inputs, g, torch.float32)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_backward_is_deterministic():
    inputs, grads = make(3, 100, 40, torch.float32, "cpu")
    assert_same_for_thread_counts(lambda: run("cpu", inputs, grads))


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference",) + ("cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    inputs, _ = make(2, 4, 3, torch.float64, device)
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda *t: mk.residual_adaln_modulate(*t, eps=EPS), leaves, fast_mode=is_interpreted(backend, device)
        )


def _ops(backend):
    if backend == "triton":
        return (torch.ops.mdt_kernels.residual_adaln_modulate_triton,
                torch.ops.mdt_kernels.residual_adaln_modulate_backward_triton)
    return op_namespace(backend).residual_adaln_modulate, op_namespace(backend).residual_adaln_modulate_backward


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    fwd, bwd = _ops(backend)
    for dtype in (torch.float32, torch.float16):
        (x, gate, y, shift, scale), (gh, gout) = make(2, 6, 5, dtype, device)
        torch.library.opcheck(fwd, (x.requires_grad_(), gate.requires_grad_(), y, shift, scale, EPS))
        torch.library.opcheck(fwd, (x.detach(), gate.detach(), y, shift, scale, EPS))
        h, _, mean, rstd = fwd(x.detach(), gate.detach(), y, shift, scale, EPS)
        torch.library.opcheck(bwd, (gh, gout, h, y, gate.detach(), scale, mean, rstd))
        torch.library.opcheck(bwd, (None, gout, h, y, gate.detach(), scale, mean, rstd))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    x = torch.randn(2, 6, 5, device=device, requires_grad=True)
    y = torch.randn(2, 6, 5, device=device, requires_grad=True)
    mod = torch.randn(2, 30, device=device, requires_grad=True)
    g = torch.randn(2, 6, 5, device=device)

    def f(x, mod, y, op):
        shift, scale, gate = mod.chunk(6, dim=1)[:3]
        h, out = op(x * 2, gate, y.sin(), shift, scale)
        return h.cos() + out

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    with mk.use_backend(backend):
        grads = torch.autograd.grad(compiled(x, mod, y, mk.residual_adaln_modulate), (x, mod, y), g)
    grads_ref = torch.autograd.grad(f(x, mod, y, residual_adaln_modulate_ref), (x, mod, y), g)
    for a, r in zip(grads, grads_ref, strict=True):
        assert_close(a, r)


def _mutated(i, fn):
    """Applies fn to input i of (x, gate, y, shift, scale)."""
    return lambda *t: tuple(fn(v) if j == i else v for j, v in enumerate(t))


BAD = [
    ("x rank", _mutated(0, lambda t: t[0]), ValueError, "x must be 3-D"),
    ("y shape", _mutated(2, lambda t: t[:, :2]), ValueError, r"y must have shape \(B, N, D\) like x"),
    ("gate shape", _mutated(1, lambda t: t[:1]), ValueError, r"gate must have shape \(B, D\) = \(2, 5\)"),
    ("shift rank", _mutated(3, lambda t: t[0]), ValueError, "shift must be 2-D"),
    ("scale width", _mutated(4, lambda t: t[:, :3]), ValueError, r"scale must have shape \(B, D\)"),
    ("dtype mix", _mutated(4, lambda t: t.double()), TypeError, "one dtype"),
    ("low precision mix", _mutated(2, lambda t: t.bfloat16()), TypeError, "one dtype"),
    ("integer x", lambda *t: tuple(v.long() for v in t), TypeError, "x must be float32"),
    ("devices", _mutated(3, lambda t: t.to("meta")), ValueError, "one device"),
    ("not a tensor", _mutated(1, lambda t: t.tolist()), TypeError, "gate must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    if mk._dispatch.unavailable_reason(backend, "cpu"):
        pytest.skip(mk._dispatch.unavailable_reason(backend, "cpu"))
    inputs, _ = make(2, 6, 5, torch.float32, "cpu")
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.residual_adaln_modulate(*mutate(*inputs))


def test_bad_eps_raises():
    inputs, _ = make(2, 6, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="eps"):
        mk.residual_adaln_modulate(*inputs, eps=-1e-6)


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_inputs_itself(backend):
    (x, gate, y, shift, scale), (gh, gout) = make(2, 6, 5, torch.float32, "cpu")
    op, bwd = op_namespace(backend).residual_adaln_modulate, op_namespace(backend).residual_adaln_modulate_backward
    with pytest.raises(ValueError, match="shift must have shape"):
        op(x, gate, y, shift[:1], scale, EPS)
    with pytest.raises(TypeError, match="gate has dtype"):
        op(x, gate.half(), y, shift, scale, EPS)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        op(x, gate, y[:, :1], shift, scale, EPS)
    h, _, mean, rstd = op(x, gate, y, shift, scale, EPS)
    with pytest.raises(ValueError, match="grad_h must have the shape"):
        bwd(gh[:1], gout, h, y, gate, scale, mean, rstd)
    with pytest.raises(ValueError, match="rstd must have shape"):
        bwd(gh, gout, h, y, gate, scale, mean, rstd[:, :2])
