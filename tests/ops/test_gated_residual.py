import pytest
import torch
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
from mdt_kernels.ops.gated_residual import gated_residual_ref

PAIRS = backend_device_pairs()
NAMES = ("out", "dx", "dgate", "dy")


def eager(x, gate, y):
    """The op as DiT/MDT code writes it, evaluated in the inputs' dtype."""
    return x + gate[:, None] * y


def forward_backward(fn, inputs, g):
    """fn(*inputs) and the gradients of every input, on leaf copies that keep the inputs' strides."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, g)]


def run(backend, inputs, g):
    with mk.use_backend(backend):
        return forward_backward(mk.gated_residual, inputs, g)


def check(backend, inputs, g, dtype):
    """Every output against the fp64 reference: fp32 within TOL (per-sample sums: assert_close_fp32),
    fp16/bf16 within twice eager's error."""
    got = run(backend, inputs, g)
    ref = forward_backward(gated_residual_ref, [t.double() for t in inputs], g.double())
    low = forward_backward(eager, inputs, g)
    for name, a, r, e in zip(NAMES, got, ref, low, strict=True):
        if dtype == torch.float32:
            assert_close_fp32(a, r, e, name)
        else:
            assert_close_to_ref(a, r, e, name)


def make(B, N, D, dtype, device, layout="chunk"):
    x = torch.randn(B, N, D, dtype=dtype, device=device)
    y = torch.randn(B, N, D, dtype=dtype, device=device)
    (gate,) = modulation(B, D, 1, dtype, device, layout)
    return [x, gate, y], torch.randn(B, N, D, dtype=dtype, device=device)


SHAPES = [(2, 5, 1), (2, 7, 3), (3, 9, 97), (2, 3, 1152), (1, 2, 4097), (2, 70, 24), (0, 4, 8), (2, 0, 8), (1, 1, 5)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_matches_reference(backend, device, dtype, B, N, D):
    if is_interpreted(backend, device):
        N = min(N, 9)  # the interpreter runs ~1 ms per program
    inputs, g = make(B, N, D, dtype, device)
    check(backend, inputs, g, dtype)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    interpreted = is_interpreted(backend, device)

    @property_settings(backend, device)
    @given(
        B=st.integers(0, 3), N=st.integers(0, 6 if interpreted else 40), D=st.sampled_from([1, 3, 16, 97, 130]),
        dtype=st.sampled_from(list(DTYPES.values())), layout=st.sampled_from(MOD_LAYOUTS),
        strided_x=st.booleans(), strided_y=st.booleans(),
    )
    def prop(B, N, D, dtype, layout, strided_x, strided_y):
        (x, gate, y), g = make(B, N, D, dtype, device, layout)
        x, y, g = strided(x) if strided_x else x, strided(y) if strided_y else y, strided(g) if strided_y else g
        check(backend, [x, gate, y], g, dtype)

    prop()


@pytest.mark.parametrize("backend,device", PAIRS)
def test_only_x_needs_grad(backend, device):
    (x, gate, y), g = make(2, 5, 7, torch.float32, device)
    x.requires_grad_(True)
    with mk.use_backend(backend):
        (dx,) = torch.autograd.grad(mk.gated_residual(x, gate, y), x, g)
    assert torch.equal(dx, g)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_large_call_streaming_stores():
    # Calls moving more than 8 MiB write fp32 outputs with streaming stores; an odd D leaves rows
    # unaligned, exercising the aligned body and both scalar edges.
    inputs, g = make(3, 400, 1151, torch.float32, "cpu")
    check("cpu", inputs, g, torch.float32)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_backward_is_deterministic():
    inputs, g = make(3, 100, 40, torch.float32, "cpu")
    assert_same_for_thread_counts(lambda: run("cpu", inputs, g))


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference",) + ("cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    inputs, _ = make(2, 5, 3, torch.float64, device)
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(mk.gated_residual, leaves, fast_mode=is_interpreted(backend, device))


def _ops(backend):
    if backend == "triton":
        return torch.ops.mdt_kernels.gated_residual_triton, torch.ops.mdt_kernels.gated_residual_backward_triton
    return op_namespace(backend).gated_residual, op_namespace(backend).gated_residual_backward


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    fwd, bwd = _ops(backend)
    for dtype in (torch.float32, torch.float16):
        (x, gate, y), g = make(2, 6, 5, dtype, device)
        torch.library.opcheck(fwd, (x.requires_grad_(), gate.requires_grad_(), y))
        torch.library.opcheck(fwd, (x.detach(), gate.detach(), y))
        torch.library.opcheck(bwd, (g, gate.detach(), y))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    x = torch.randn(2, 6, 5, device=device, requires_grad=True)
    y = torch.randn(2, 6, 5, device=device, requires_grad=True)
    mod = torch.randn(2, 30, device=device, requires_grad=True)
    g = torch.randn(2, 6, 5, device=device)

    def f(x, mod, y, op):
        gate = mod.chunk(6, dim=1)[2]
        return op(x * 2, gate, y.sin()).cos()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    with mk.use_backend(backend):
        grads = torch.autograd.grad(compiled(x, mod, y, mk.gated_residual), (x, mod, y), g)
    grads_ref = torch.autograd.grad(f(x, mod, y, gated_residual_ref), (x, mod, y), g)
    for a, r in zip(grads, grads_ref, strict=True):
        assert_close(a, r)


BAD = [
    ("x rank", lambda x, gt, y: (x[0], gt, y), ValueError, "x must be 3-D"),
    ("gate rank", lambda x, gt, y: (x, gt[0], y), ValueError, "gate must be 2-D"),
    ("gate shape", lambda x, gt, y: (x, gt[:1], y), ValueError, r"gate must have shape \(B, D\) = \(2, 5\)"),
    ("y shape", lambda x, gt, y: (x, gt, y[:, :3]), ValueError, r"y must have shape \(B, N, D\) like x"),
    ("y rank", lambda x, gt, y: (x, gt, y[0]), ValueError, "y must be 3-D"),
    ("dtype mix", lambda x, gt, y: (x, gt, y.half()), TypeError, "one dtype"),
    ("integer x", lambda x, gt, y: (x.int(), gt.int(), y.int()), TypeError, "x must be float32"),
    ("integer gate", lambda x, gt, y: (x, gt.long(), y), TypeError, "one dtype"),
    ("devices", lambda x, gt, y: (x, gt, y.to("meta")), ValueError, "one device"),
    ("not a tensor", lambda x, gt, y: (x, 0.5, y), TypeError, "gate must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    if mk._dispatch.unavailable_reason(backend, "cpu"):
        pytest.skip(mk._dispatch.unavailable_reason(backend, "cpu"))
    (x, gate, y), _ = make(2, 6, 5, torch.float32, "cpu")
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.gated_residual(*mutate(x, gate, y))


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_inputs_itself(backend):
    (x, gate, y), g = make(2, 6, 5, torch.float32, "cpu")
    op, bwd = op_namespace(backend).gated_residual, op_namespace(backend).gated_residual_backward
    with pytest.raises(ValueError, match="gate must have shape"):
        op(x, gate[:1], y)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        op(x, gate, y[:1])
    with pytest.raises(TypeError, match="y has dtype"):
        op(x, gate, y.double())
    with pytest.raises(TypeError, match="x must be float32"):
        op(x.long(), gate.long(), y.long())
    with pytest.raises(ValueError, match="grad must have the shape"):
        bwd(g[:1], gate, y)
