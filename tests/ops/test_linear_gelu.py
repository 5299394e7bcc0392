import pytest
import torch
import torch.nn.functional as F
from helpers import (
    CPU_BACKENDS,
    DTYPES,
    LINEAR_BAD_INPUTS,
    LINEAR_SHAPES,
    as_float64,
    assert_close,
    assert_gradients_without_input_features,
    assert_same_for_thread_counts,
    backend_device_pairs,
    compile_frame_count,
    compiled_backends,
    forward_and_grads,
    is_interpreted,
    op_namespace,
    property_settings,
    strided,
)
from hypothesis import given
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops.linear_gelu import linear_gelu_ref

PAIRS = backend_device_pairs(("cpu", "cuda", "triton"))
ALL_DTYPES = {**DTYPES, "f64": torch.float64}
NAMES = ("y", "dx", "dweight", "dbias")


def needs_ext():
    return pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None,
                              reason="C++ extension not built")


def make(x_shape, dout, dtype, device, scale=1.0, bias_scale=1.0):
    """x (..., Din) ~ N(0, 1), weight scaled so that h = x W^T ~ N(0, scale^2), bias ~ N(0, bias_scale^2),
    and a cotangent for y."""
    din = x_shape[-1]
    x = torch.randn(x_shape, dtype=torch.float64, device=device)
    w = torch.randn(dout, din, dtype=torch.float64, device=device) * (scale / max(din, 1) ** 0.5)
    b = bias_scale * torch.randn(dout, dtype=torch.float64, device=device)
    g = torch.randn(*x_shape[:-1], dout, dtype=torch.float64, device=device)
    return [t.to(dtype) for t in (x, w, b)], g.to(dtype)


def run(backend, inputs, g):
    with mk.use_backend(backend):
        out, grads = forward_and_grads(mk.linear_gelu, inputs, [0, 1, 2], g)
    return [out.detach(), *grads]


# Unit roundoff of the low dtypes, and the largest |GELU'| and |GELU''| of the tanh GELU (1.129 at
# u = 1.42, and sqrt(2/pi) = 0.798 at u = 0; test_gelu_slope_bounds checks them).
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
MAX_SLOPE, MAX_CURVATURE = 1.13, 0.8


def low_precision_bounds(inputs, g, ref):
    """Componentwise first-order bounds on the rounding error of y, dx, dweight, dbias when, as in F.linear
    and in these kernels, the GEMMs take low-precision operands, accumulate in fp32 and round their result
    once, and the GELU and its derivative are evaluated in fp32 and rounded once.

    ref: the exact (fp64) y, dx, dweight, dbias of the same inputs. With eps the unit roundoff of the
    dtype, the GELU input h + b carries at most eps (|h| + |h + b|) (the kernels round h, F.linear h + b),
    which moves y by at most MAX_SLOPE times that and dh = g GELU'(h + b) by |g| MAX_CURVATURE times that;
    dh is then rounded (eps |dh|) and enters dx = dh W, dW = dh^T x and db = sum(dh) through the absolute
    values of the other factor; every output is rounded once more (eps |result|)."""
    x, w, b = [t.double() for t in inputs]
    eps = UNIT_ROUNDOFF[inputs[0].dtype]
    x2 = x.reshape(-1, x.shape[-1])
    h = x2 @ w.T
    pre = h + b
    du = eps * (h.abs() + pre.abs())
    g2 = g.double().reshape(h.shape)
    v = pre.detach().requires_grad_()
    (dh,) = torch.autograd.grad(F.gelu(v, approximate="tanh"), v, g2)
    e_dh = g2.abs() * MAX_CURVATURE * du + eps * dh.abs()
    y, dx, dw, db = (r.double() for r in ref)
    return [(MAX_SLOPE * du).reshape(y.shape) + eps * y.abs(),
            (e_dh @ w.abs()).reshape(dx.shape) + eps * dx.abs(),
            e_dh.T @ x2.abs() + eps * dw.abs(),
            e_dh.sum(0) + eps * db.abs()]


def check(backend, inputs, g):
    """y and the gradients w.r.t. x, weight and bias against the reference evaluated in float64 on the
    same (already rounded) inputs.

    float32/float64: the dtype's TOL. float16/bfloat16: the kernels run the GEMMs in the low dtype, as
    F.linear does, so h is rounded to it and that error is carried through every later GEMM (for dweight
    and dbias summed over all rows): no fixed tolerance fits every shape, and "within twice the error of
    PyTorch's own low-precision evaluation" (helpers.assert_close_to_ref) proved too tight where both
    errors are a ulp or so of a few large sums and PyTorch's is the luckier. So each element is held to
    the first-order worst case of low_precision_bounds, which grows with the sums' lengths and the
    operands' sizes as the rounding errors can, doubled for what it leaves out (second-order terms, the
    fp32 accumulation and fp32 tanh, ~1e-7, small next to eps = 2^-11 or 2^-8). Measured errors reach
    at most ~0.85 of the undoubled bound (a single product, where it is nearly tight)."""
    x, w, b = inputs
    dtype = x.dtype
    got = run(backend, inputs, g)
    ref_out, ref_grads = forward_and_grads(linear_gelu_ref, as_float64(inputs), [0, 1, 2], g.double())
    ref = [ref_out.detach(), *ref_grads]
    out_shape = (*x.shape[:-1], w.shape[0])
    assert got[0].shape == out_shape and got[0].dtype == dtype
    for a, t in zip(got[1:], inputs, strict=True):
        assert a.shape == t.shape and a.dtype == t.dtype
    if dtype in (torch.float32, torch.float64):
        for name, a, r in zip(NAMES, got, ref, strict=True):
            assert_close(a, r, dtype, msg=lambda m, name=name: f"{name}: {m}")
        return
    for name, a, r, bound in zip(NAMES, got, ref, low_precision_bounds(inputs, g, ref), strict=True):
        err = (a.double() - r).abs()
        ratio = (err / (2 * bound + 1e-30)).max().item() if err.numel() else 0.0
        assert ratio <= 1, f"{name}: error {ratio:.3g} times twice the {dtype} bound"


def test_gelu_slope_bounds():
    u = torch.linspace(-12, 12, 240001, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(F.gelu(u, approximate="tanh").sum(), u, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), u)
    assert 1.12 < d1.abs().max() <= MAX_SLOPE and 0.79 < d2.abs().max() <= MAX_CURVATURE


def test_reference_is_pytorch_mlp_first_half():
    x, w, b = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64), torch.randn(7)
    u = x @ w.T + b.double()
    expected = 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u**3)))
    torch.testing.assert_close(linear_gelu_ref(x, w, b.double()), expected)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", ALL_DTYPES.values(), ids=ALL_DTYPES.keys())
@pytest.mark.parametrize("x_shape,dout", LINEAR_SHAPES, ids=[f"{s}-{d}" for s, d in LINEAR_SHAPES])
def test_matches_reference(backend, device, dtype, x_shape, dout):
    inputs, g = make(x_shape, dout, dtype, device)
    check(backend, inputs, g)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", ALL_DTYPES.values(), ids=ALL_DTYPES.keys())
def test_saturated_and_near_zero_inputs(backend, device, dtype):
    # h + b spread over +-40: tanh saturates (|u| > 10, GELU(u) is u or 0), the tails where 1 -+ tanh
    # cancels, and the centre. Din = 3 keeps the GEMM's own rounding small next to the GELU's.
    (x, w, b), g = make((37, 3), 17, dtype, device, scale=20.0, bias_scale=10.0)
    u = (x.double() @ w.double().T + b.double())
    assert (u > 10).sum() > 20 and (u < -10).sum() > 20
    check(backend, [x, w, b], g)
    # u within ~1e-3 of 0: GELU(u) ~ u/2, GELU'(u) ~ 1/2.
    (x, w, b), g = make((37, 3), 17, dtype, device, scale=1e-3, bias_scale=1e-3)
    check(backend, [x, w, b], g)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["f64", "f16"])
def test_many_rows_partial_last_chunk(backend, device, dtype):
    # 1025 rows: 64 full 16-row chunks and a 1-row one on CPU; 342 chunks of 3 rows and a 2-row one in
    # the Triton backward (it groups rows only past 512 of them), so both db reductions end on a partial
    # chunk. Not float32: dweight is then a 1025-term fp32 dot product whose own rounding (up to ~1025
    # * 2^-24 * sum|dh x|, 3e-5 seen) exceeds TOL's 1e-5; float64 checks the same code just as sharply.
    (x, w, b), g = make((5, 205, 7), 5, dtype, device)
    check(backend, [x, w, b], g)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("x_shape", [(0, 5), (2, 0, 5), (0, 0)])
def test_empty_input_has_zero_gradients(backend, device, x_shape):
    (x, w, b), _ = make(x_shape, 3, torch.float32, device)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    with mk.use_backend(backend):
        y = mk.linear_gelu(*leaves)
    assert y.shape == (*x_shape[:-1], 3) and y.dtype == torch.float32
    dx, dw, db = torch.autograd.grad(y, leaves, torch.ones_like(y))  # runs the backward op on no rows
    assert dx.shape == x.shape
    assert torch.equal(dw, torch.zeros_like(w)) and torch.equal(db, torch.zeros_like(b))


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("x_shape,dout", [((4, 0), 3), ((2, 3, 0), 1), ((4, 5), 0)])
def test_no_features(backend, device, x_shape, dout):
    # Din = 0: h = 0, so y = GELU(b) in every row and only db is non-zero; Dout = 0: nothing to compute.
    inputs, g = make(x_shape, dout, torch.float64, device)
    check(backend, inputs, g)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_sum_loss_expanded_cotangent(backend, device):
    # y.sum() hands the backward an expanded (stride-0) cotangent.
    (x, w, b), _ = make((2, 9, 6), 5, torch.float64, device)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    with mk.use_backend(backend):
        grads = torch.autograd.grad(mk.linear_gelu(*leaves).sum(), leaves)
    for a, r in zip(grads, torch.autograd.grad(linear_gelu_ref(*leaves).sum(), leaves), strict=True):
        assert_close(a, r)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_property(backend, device):
    interpreted = is_interpreted(backend, device)

    @property_settings(backend, device)
    @given(lead=st.lists(st.integers(0, 5 if interpreted else 12), min_size=0, max_size=2),
           din=st.sampled_from([1, 3, 17, 32]), dout=st.sampled_from([1, 3, 17, 40]),
           dtype=st.sampled_from(list(ALL_DTYPES.values())), strided_x=st.booleans(), transposed_w=st.booleans(),
           scale=st.sampled_from([1e-3, 1.0, 4.0]))
    def prop(lead, din, dout, dtype, strided_x, transposed_w, scale):
        (x, w, b), g = make((*lead, din), dout, dtype, device, scale=scale)
        x = strided(x) if strided_x else x  # every other element of a wider buffer
        w = w.t().contiguous().t() if transposed_w else w  # column-major (Dout, Din)
        check(backend, [x, w, b], g)

    prop()


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference", "cpu", "cuda", "triton")))
def test_gradcheck(backend, device):
    (x, w, b), _ = make((2, 3, 4), 5, torch.float64, device, scale=2.0)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(mk.linear_gelu, leaves, fast_mode=is_interpreted(backend, device))
        assert torch.autograd.gradcheck(mk.linear_gelu, [leaves[0][0, 0], leaves[1], leaves[2]])  # 1-D x


def _ops(backend):
    suffix = "_triton" if backend == "triton" else ""
    return (getattr(op_namespace(backend), "linear_gelu" + suffix),
            getattr(op_namespace(backend), "linear_gelu_backward" + suffix))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    fwd, bwd = _ops(backend)
    for dtype in (torch.float32, torch.float16):
        for x_shape in [(2, 6, 5), (5,)]:
            (x, w, b), g = make(x_shape, 7, dtype, device)
            torch.library.opcheck(fwd, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()))
            torch.library.opcheck(fwd, (x.detach(), w.detach(), b.detach()))
            _, h = fwd(x.detach(), w.detach(), b.detach())
            assert h.shape == (x.shape[:-1].numel(), 7)
            torch.library.opcheck(bwd, (g, x.detach(), w.detach(), b.detach(), h))


@needs_ext()
@pytest.mark.parametrize("x_shape,dout", [((2, 50, 385), 40), ((193, 777), 300), ((2, 96, 384), 1536)])
def test_mdt_engine_fuses_gelu_into_the_gemm(x_shape, dout):
    # Under the mdt GEMM engine the inference form applies bias + GELU in the GEMM's epilogue (K in one,
    # two and three slices): the same numbers as the training form's GEMM then separate GELU pass (the
    # bias goes on after the last slice, where that pass adds it), and within TOL of the fp64 reference.
    (x, w, b), _ = make(x_shape, dout, torch.float32, "cpu")
    ops = torch.ops.mdt_kernels
    with mk.use_cpu_gemm_engine("mdt"):
        with torch.profiler.profile() as prof:
            fused = ops.linear_gelu_inference(x, w, b)
        separate = ops.linear_gelu(x, w, b)[0]
    assert [e.name for e in prof.events()].count("mdt_kernels::gemm_f32_gelu") == 1
    torch.testing.assert_close(fused, separate, rtol=0, atol=0)
    assert_close(fused, linear_gelu_ref(*as_float64([x, w, b])), torch.float32)


@needs_ext()
def test_cpu_backward_is_deterministic():
    (x, w, b), g = make((10, 100, 24), 40, torch.float32, "cpu")  # 1000 rows: 63 row chunks
    assert_same_for_thread_counts(lambda: run("cpu", [x, w, b], g), counts=(1, 2, 1))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_autocast_bf16(backend, device):
    # fp32 leaves under bf16 autocast: like F.linear, the op runs in bf16 (y is bf16) and the gradients
    # reach the fp32 leaves in fp32 through the casts.
    (x, w, b), _ = make((2, 7, 12), 9, torch.float32, device)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    g = torch.randn(2, 7, 9, device=device, dtype=torch.bfloat16)
    with torch.autocast(device, dtype=torch.bfloat16):
        with mk.use_backend(backend):
            y = mk.linear_gelu(*leaves)
        y_ref = linear_gelu_ref(*leaves)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y, y_ref, torch.bfloat16)
    grads = torch.autograd.grad(y, leaves, g)
    for a, r, t in zip(grads, torch.autograd.grad(y_ref, leaves, g), leaves, strict=True):
        assert a.dtype == t.dtype == torch.float32
        assert_close(a, r, torch.bfloat16)
    # Mixed fp32/bf16 inputs are cast to one dtype as F.linear's are; float64 ones are left alone.
    with torch.autocast(device, dtype=torch.bfloat16), mk.use_backend(backend):
        assert mk.linear_gelu(x.detach(), w.detach().bfloat16(), b.detach()).dtype == torch.bfloat16
        y64 = mk.linear_gelu(*as_float64([x.detach(), w.detach(), b.detach()]))
    assert y64.dtype == torch.float64
    assert_close(y64, linear_gelu_ref(*as_float64([x.detach(), w.detach(), b.detach()])))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_torch_compile_fullgraph(backend, device):
    (x, w, b), g = make((2, 6, 5), 7, torch.float32, device)

    def f(op, x, w, b):
        return op(x * 2, w, b.sin()).cos()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if is_interpreted(backend, device) else "inductor")
    with mk.use_backend(backend):
        y, grads = forward_and_grads(lambda *a: compiled(mk.linear_gelu, *a), [x, w, b], [0, 1, 2], g)
    y_ref, grads_ref = forward_and_grads(lambda *a: f(linear_gelu_ref, *a), [x, w, b], [0, 1, 2], g)
    assert_close(y, y_ref)
    for a, r in zip(grads, grads_ref, strict=True):
        assert_close(a, r)


BAD = LINEAR_BAD_INPUTS


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    (x, w, b), _ = make((4, 5), 3, torch.float32, "cpu")
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.linear_gelu(*mutate(x, w, b))


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_inputs_itself(backend):
    (x, w, b), g = make((2, 4, 5), 3, torch.float32, "cpu")
    op, bwd = op_namespace(backend).linear_gelu, op_namespace(backend).linear_gelu_backward
    with pytest.raises(ValueError, match="but x has 4 input features"):
        op(x[..., :4], w, b)
    with pytest.raises(ValueError, match="bias has 2 elements"):
        op(x, w, b[:2])
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        op(x, w[0], b)
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        op(x[0, 0, 0], w, b)
    with pytest.raises(TypeError, match="x and weight must have the same dtype"):
        op(x, w.double(), b)
    with pytest.raises(TypeError, match="x must be float32"):
        op(x.long(), w.long(), b.long())
    _, h = op(x, w, b)
    with pytest.raises(ValueError, match="grad shape"):
        bwd(g[:1], x, w, b, h)
    with pytest.raises(ValueError, match="h must have shape"):
        bwd(g, x, w, b, h[:3])
    with pytest.raises(TypeError, match="x and h must have the same dtype"):
        bwd(g, x, w, b, h.double())
    with pytest.raises(TypeError, match="x and grad must have the same dtype"):
        bwd(g.half(), x, w, b, h)



@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_compile_does_not_specialise_the_row_count():
    w, b = torch.randn(6, 4), torch.randn(6)
    assert compile_frame_count(lambda x: mk.linear_gelu(x, w, b), [(torch.randn(2, n, 4),) for n in (9, 8, 7, 6)]) <= 2


def test_reference_gradients_without_input_features():
    assert_gradients_without_input_features(linear_gelu_ref, lambda b: F.gelu(b, approximate="tanh"))
