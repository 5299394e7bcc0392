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
from mdt_kernels.ops.adaln_modulate import adaln_modulate_ref

PAIRS = backend_device_pairs()
EPS = 1e-6
NAMES = ("out", "dx", "dshift", "dscale")


def eager(x, shift, scale):
    """The op as DiT/MDT code writes it, evaluated in the inputs' dtype."""
    return F.layer_norm(x, (x.shape[-1],), eps=EPS) * (1 + scale[:, None]) + shift[:, None]


def forward_backward(fn, inputs, g):
    """fn(*inputs) and the gradients of every input, on leaf copies that keep the inputs' strides."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, g)]


def run(backend, inputs, g):
    with mk.use_backend(backend):
        return forward_backward(lambda *t: mk.adaln_modulate(*t, eps=EPS), inputs, g)


def check(backend, inputs, g, dtype):
    """Every output against the fp64 reference: fp32 within TOL (per-sample sums: assert_close_fp32),
    fp16/bf16 within twice eager's error."""
    got = run(backend, inputs, g)
    ref = forward_backward(lambda *t: adaln_modulate_ref(*t, EPS), [t.double() for t in inputs], g.double())
    low = forward_backward(eager, inputs, g)
    for name, a, r, e in zip(NAMES, got, ref, low, strict=True):
        if dtype == torch.float32:
            assert_close_fp32(a, r, e, name)
        else:
            assert_close_to_ref(a, r, e, name)


def make(B, N, D, dtype, device, layout="chunk"):
    x = 1.5 * torch.randn(B, N, D, dtype=dtype, device=device) + 0.3
    shift, scale = modulation(B, D, 2, dtype, device, layout)
    return [x, shift, scale], torch.randn(B, N, D, dtype=dtype, device=device)


# Non-powers of two, a single feature, rows longer than one Triton block (4097), empty batches/tokens,
# several token chunks per sample (N=70).
SHAPES = [(2, 5, 1), (2, 7, 3), (3, 9, 97), (2, 3, 1152), (1, 2, 4097), (2, 70, 24), (0, 4, 8), (2, 0, 8), (1, 1, 5)]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_matches_reference(backend, device, dtype, B, N, D):
    if is_interpreted(backend, device):
        N = min(N, 9)  # the interpreter runs ~1 ms per program; Triton chunks are 4 tokens at these sizes
    inputs, g = make(B, N, D, dtype, device)
    check(backend, inputs, g, dtype)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    interpreted = is_interpreted(backend, device)

    @property_settings(backend, device)
    @given(
        B=st.integers(0, 3), N=st.integers(0, 6 if interpreted else 40), D=st.sampled_from([1, 3, 16, 97, 130]),
        dtype=st.sampled_from(list(DTYPES.values())), layout=st.sampled_from(MOD_LAYOUTS), strided_x=st.booleans(),
    )
    def prop(B, N, D, dtype, layout, strided_x):
        inputs, g = make(B, N, D, dtype, device, layout)
        if strided_x:
            inputs[0], g = strided(inputs[0]), strided(g)
        check(backend, inputs, g, dtype)

    prop()


@pytest.mark.parametrize("backend,device", [p for p in PAIRS if p.values[0] == "triton"])
def test_triton_multi_block_rows(backend, device, monkeypatch):
    # Rows longer than a block take the looped path (partials accumulated in the program's slot).
    monkeypatch.setattr(_adaln, "MAX_BLOCK_D", 16)
    inputs, g = make(2, 5, 37, torch.float32, device)
    check(backend, inputs, g, torch.float32)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_large_call_streaming_stores():
    # Calls moving more than 8 MiB write fp32 outputs with streaming stores; an odd D leaves rows
    # unaligned, exercising the aligned body and both scalar edges.
    inputs, g = make(3, 400, 1151, torch.float32, "cpu")
    check("cpu", inputs, g, torch.float32)


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_cpu_backward_is_deterministic():
    # Per-sample sums use fixed token chunks reduced in order: bitwise equal for any thread count.
    inputs, g = make(3, 100, 40, torch.float32, "cpu")
    assert_same_for_thread_counts(lambda: run("cpu", inputs, g))


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference",) + ("cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    (x, shift, scale), _ = make(2, 5, 3, torch.float64, device)
    leaves = [t.detach().requires_grad_(True) for t in (x, shift, scale)]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda *t: mk.adaln_modulate(*t, eps=EPS), leaves, fast_mode=is_interpreted(backend, device)
        )


def _ops(backend):
    if backend == "triton":
        return torch.ops.mdt_kernels.adaln_modulate_triton, torch.ops.mdt_kernels.adaln_modulate_backward_triton
    return op_namespace(backend).adaln_modulate, op_namespace(backend).adaln_modulate_backward


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    fwd, bwd = _ops(backend)
    for dtype in (torch.float32, torch.float16):
        (x, shift, scale), g = make(2, 6, 5, dtype, device)
        torch.library.opcheck(fwd, (x.requires_grad_(), shift.requires_grad_(), scale, EPS))
        torch.library.opcheck(fwd, (x.detach(), shift.detach(), scale, EPS))
        _, mean, rstd = fwd(x.detach(), shift.detach(), scale, EPS)
        torch.library.opcheck(bwd, (g, x.detach(), scale, mean, rstd))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    x = torch.randn(2, 6, 5, device=device, requires_grad=True)
    mod = torch.randn(2, 30, device=device, requires_grad=True)
    g = torch.randn(2, 6, 5, device=device)

    def f(x, mod, op):
        shift, scale = mod.chunk(6, dim=1)[:2]
        return op(x * 2, shift, scale).sin()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    with mk.use_backend(backend):
        y = compiled(x, mod, mk.adaln_modulate)
        dx, dmod = torch.autograd.grad(y, (x, mod), g)
    y_ref = f(x, mod, adaln_modulate_ref)
    dx_ref, dmod_ref = torch.autograd.grad(y_ref, (x, mod), g)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)
    assert_close(dmod, dmod_ref)


BAD = [
    ("x rank", lambda x, sh, sc: (x[0], sh, sc), ValueError, "x must be 3-D"),
    ("shift rank", lambda x, sh, sc: (x, sh[0], sc), ValueError, "shift must be 2-D"),
    ("scale shape", lambda x, sh, sc: (x, sh, sc[:1]), ValueError, r"scale must have shape \(B, D\) = \(2, 5\)"),
    ("shift width", lambda x, sh, sc: (x, sh[:, :4], sc), ValueError, r"shift must have shape \(B, D\)"),
    ("dtype mix", lambda x, sh, sc: (x, sh.double(), sc), TypeError, "one dtype"),
    ("low precision mix", lambda x, sh, sc: (x.bfloat16(), sh, sc), TypeError, "one dtype"),
    ("integer x", lambda x, sh, sc: (x.long(), sh.long(), sc.long()), TypeError, "x must be float32"),
    ("integer scale", lambda x, sh, sc: (x, sh, sc.int()), TypeError, "one dtype"),
    ("devices", lambda x, sh, sc: (x, sh.to("meta"), sc), ValueError, "one device"),
    ("not a tensor", lambda x, sh, sc: (x, sh.tolist(), sc), TypeError, "shift must be a torch.Tensor"),
]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    if mk._dispatch.unavailable_reason(backend, "cpu"):
        pytest.skip(mk._dispatch.unavailable_reason(backend, "cpu"))
    (x, shift, scale), _ = make(2, 6, 5, torch.float32, "cpu")
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.adaln_modulate(*mutate(x, shift, scale))


@pytest.mark.parametrize("eps,exc", [(-1.0, ValueError), (float("nan"), ValueError), ("1e-6", TypeError)])
def test_bad_eps_raises(eps, exc):
    (x, shift, scale), _ = make(2, 6, 5, torch.float32, "cpu")
    with pytest.raises(exc, match="eps"):
        mk.adaln_modulate(x, shift, scale, eps=eps)


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_inputs_itself(backend):
    # The registered ops are callable directly (and from compiled graphs): they check before reading.
    (x, shift, scale), g = make(2, 6, 5, torch.float32, "cpu")
    op, bwd = op_namespace(backend).adaln_modulate, op_namespace(backend).adaln_modulate_backward
    with pytest.raises(ValueError, match="shift must have shape"):
        op(x, shift[:1], scale, EPS)
    with pytest.raises(TypeError, match="scale has dtype"):
        op(x, shift, scale.double(), EPS)
    with pytest.raises(TypeError, match="x must be float32"):
        op(x.long(), shift.long(), scale.long(), EPS)
    with pytest.raises(ValueError, match="eps"):
        op(x, shift, scale, -1.0)
    _, mean, rstd = op(x, shift, scale, EPS)
    with pytest.raises(ValueError, match="mean must have shape"):
        bwd(g, x, scale, mean[:1], rstd)
    with pytest.raises(TypeError, match="rstd must be Float"):
        bwd(g, x, scale, mean, rstd.double())
    with pytest.raises(ValueError, match="grad must have the shape"):
        bwd(g[:, :2], x, scale, mean, rstd)
