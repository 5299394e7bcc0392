import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    DTYPES,
    LINEAR_BAD_INPUTS,
    LINEAR_SHAPES,
    as_float64,
    assert_close,
    assert_gradients_without_input_features,
    assert_same_for_thread_counts,
    compile_frame_count,
    forward_and_grads,
    property_settings,
    strided,
)
from hypothesis import given
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops.linear import linear_ref

NO_EXT = mk._dispatch.unavailable_reason("cpu", "cpu")
needs_ext = pytest.mark.skipif(NO_EXT is not None, reason=f"C++ extension not built: {NO_EXT}")
HAS_ONEDNN = NO_EXT is None and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# Every engine this machine has, each a test parameter; a missing one is a visible skip.
ENGINES = [pytest.param(e, marks=[] if NO_EXT is None and (e != "onednn" or HAS_ONEDNN) else
                        pytest.mark.skip(reason=NO_EXT or "this PyTorch has no oneDNN"), id=e)
           for e in mk.CPU_GEMM_ENGINES]
ALL_DTYPES = {**DTYPES, "f64": torch.float64}
NAMES = ("y", "dx", "dweight", "dbias")
# Unit roundoff of the stored dtype and of the fp32 accumulation every engine uses for the low dtypes.
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
FP32_EPS = 2.0**-24


def make(x_shape, dout, dtype, bias=True, scale=1.0):
    """x (..., Din) ~ N(0, 1), weight scaled so that x W^T ~ N(0, scale^2), bias ~ N(0, 1) or None, and a
    cotangent for y."""
    din = x_shape[-1]
    x = torch.randn(x_shape, dtype=torch.float64)
    w = torch.randn(dout, din, dtype=torch.float64) * (scale / max(din, 1) ** 0.5)
    b = torch.randn(dout, dtype=torch.float64) if bias else None
    g = torch.randn(*x_shape[:-1], dout, dtype=torch.float64)
    return [None if t is None else t.to(dtype) for t in (x, w, b)], g.to(dtype)


def run(inputs, g, engine, backend="cpu"):
    wrt = [i for i, t in enumerate(inputs) if t is not None]
    with mk.use_backend(backend), mk.use_cpu_gemm_engine(engine):
        out, grads = forward_and_grads(mk.linear, inputs, wrt, g)
    return [out.detach(), *grads] + ([] if inputs[2] is not None else [None])


def low_precision_bounds(inputs, g, ref):
    """Componentwise bounds on the rounding error of y, dx, dweight, dbias for a GEMM that takes
    low-precision operands, accumulates in fp32 and rounds its result to the low dtype: the fp32
    accumulation error of a length-K dot product is at most ~K fp32-eps times the sum of the absolute
    products, and each result is rounded at most twice (the bias may be added after a first rounding),
    each rounding off by at most half the subnormal spacing where the result is below the normal range."""
    x, w, b = (None if t is None else t.double() for t in inputs)
    eps = UNIT_ROUNDOFF[inputs[0].dtype]
    tiny = torch.finfo(inputs[0].dtype).smallest_normal * 2 * eps  # the subnormal spacing
    x2, g2 = x.reshape(-1, x.shape[-1]), g.double().reshape(-1, w.shape[0])
    M, K = x2.shape
    y, dx, dw, db = ref
    abs_y = (x2.abs() @ w.abs().T).reshape(y.shape) + (0 if b is None else b.abs())
    return [tiny + 2 * eps * y.abs() + 2 * eps * abs_y + K * FP32_EPS * abs_y,
            tiny + 2 * eps * dx.abs() + w.shape[0] * FP32_EPS * (g2.abs() @ w.abs()).reshape(dx.shape),
            tiny + 2 * eps * dw.abs() + M * FP32_EPS * (g2.abs().T @ x2.abs()),
            None if db is None else tiny + 2 * eps * db.abs() + M * FP32_EPS * g2.abs().sum(0)]


def check(inputs, g, engine):
    """y and the gradients against F.linear evaluated in float64 on the same (already rounded) inputs:
    float32/float64 with the dtype's tolerance, float16/bfloat16 within low_precision_bounds."""
    x, w, b = inputs
    dtype = x.dtype
    got = run(inputs, g, engine)
    wrt = [i for i, t in enumerate(inputs) if t is not None]
    ref_out, ref_grads = forward_and_grads(linear_ref, as_float64(inputs), wrt, g.double())
    ref = [ref_out.detach(), *ref_grads] + ([] if b is not None else [None])
    assert got[0].shape == (*x.shape[:-1], w.shape[0]) and got[0].dtype == dtype
    for a, t in zip(got[1:], inputs, strict=True):
        assert (a is None) == (t is None)
        assert a is None or (a.shape == t.shape and a.dtype == t.dtype)
    if dtype in (torch.float32, torch.float64):
        for name, a, r in zip(NAMES, got, ref, strict=True):
            if a is not None:
                assert_close(a, r, dtype, msg=lambda m, name=name: f"{name}: {m}")
        return
    for name, a, r, bound in zip(NAMES, got, ref, low_precision_bounds(inputs, g, ref), strict=True):
        if a is None:
            continue
        err = (a.double() - r).abs()
        ratio = (err / (bound + 1e-30)).max().item() if err.numel() else 0.0
        assert ratio <= 1, f"{name}: error {ratio:.3g} times the {dtype} bound"


SHAPES = LINEAR_SHAPES + [((3, 11, 96), 288)]  # and a qkv projection's widths (D -> 3D)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", ALL_DTYPES.values(), ids=ALL_DTYPES.keys())
@pytest.mark.parametrize("x_shape,dout", SHAPES, ids=[f"{s}-{d}" for s, d in SHAPES])
def test_matches_reference(engine, bias, dtype, x_shape, dout):
    inputs, g = make(x_shape, dout, dtype, bias)
    check(inputs, g, engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("x_shape,dout", [((4, 0), 3), ((2, 3, 0), 1), ((4, 5), 0)])
def test_no_features(engine, x_shape, dout):
    # Din = 0: y = b in every row, dweight empty; Dout = 0: nothing to compute.
    inputs, g = make(x_shape, dout, torch.float32)
    check(inputs, g, engine)


def check_sums(inputs, g, engine, bound=1e-5):
    """float32 y and gradients against float64, each error relative to the sum of absolute products it
    comes from (fp32 error grows with the sums' lengths, so a fixed TOL does not fit long ones)."""
    x, w, b = inputs
    got = run(inputs, g, engine)
    ref_out, ref_grads = forward_and_grads(linear_ref, as_float64(inputs), [0, 1, 2], g.double())
    x2, g2, w64 = x.double().reshape(-1, x.shape[-1]), g.double().reshape(-1, w.shape[0]), w.double()
    scales = [(x2.abs() @ w64.abs().T).reshape(ref_out.shape) + 1, (g2.abs() @ w64.abs()).reshape(x.shape),
              g2.abs().T @ x2.abs(), g2.abs().sum(0)]
    for name, a, r, s in zip(NAMES, got, [ref_out, *ref_grads], scales, strict=True):
        assert a.shape == r.shape and a.dtype == x.dtype
        ratio = ((a.double() - r).abs() / (s + 1e-30)).max().item() if a.numel() else 0.0
        assert ratio < bound, f"{name}: error {ratio:.2e} of the absolute sum"


@pytest.mark.parametrize("engine", ENGINES)
def test_large_sums_float32(engine):
    # MDT-sized sums (K = 1536 in fc2, 2048 rows in dweight).
    inputs, g = make((4, 64, 1536), 96, torch.float32)
    check_sums(inputs, g, engine)


# Shapes at every edge of the mdt engine's blocking (csrc/cpu/vec/gemm.cpp): register tiles of 6 rows x
# 2 vectors (16 floats at AVX2, 32 at AVX-512), row blocks of 96, column tiles of 256, K in slices of at
# most 384 (the bias and GELU go on the last one). Partial tiles in both directions, a partial row block
# and column tile, K of 1, of one slice, of two and three slices (777: 264 + 264 + 249).
MDT_BLOCK_SHAPES = [((1, 1), 1), ((7, 5), 17), ((97, 33), 257), ((2, 50, 385), 40), ((193, 777), 300),
                    ((2, 96, 384), 512)]


@needs_ext
@pytest.mark.parametrize("transposed_w", [False, True], ids=["w", "w_t"])
@pytest.mark.parametrize("x_shape,dout", MDT_BLOCK_SHAPES, ids=[f"{s}-{d}" for s, d in MDT_BLOCK_SHAPES])
def test_mdt_engine_block_edges(x_shape, dout, transposed_w):
    # transposed_w: a column-major weight, the layout the backward's dx = g W hands the engine anyway.
    (x, w, b), g = make(x_shape, dout, torch.float32)
    w = w.t().contiguous().t() if transposed_w else w
    check_sums([x, w, b], g, "mdt")


@needs_ext
def test_mdt_engine_same_result_on_every_thread_count():
    # Each element of y (and dx) is summed in one order whatever thread computes its tile (dweight is
    # at::mm's).
    (x, w, b), g = make((300, 800), 300, torch.float32)
    assert_same_for_thread_counts(lambda: run([x, w, b], g, "mdt")[:2], (1, 2, 3))


@needs_ext
@pytest.mark.parametrize("engine", ENGINES)
def test_property(engine):
    @property_settings("cpu", "cpu")
    @given(lead=st.lists(st.integers(0, 12), min_size=0, max_size=2), din=st.sampled_from([1, 3, 17, 32]),
           dout=st.sampled_from([1, 3, 17, 40]), dtype=st.sampled_from(list(ALL_DTYPES.values())),
           bias=st.booleans(), strided_x=st.booleans(), transposed_w=st.booleans(),
           scale=st.sampled_from([1e-3, 1.0, 4.0]))
    def prop(lead, din, dout, dtype, bias, strided_x, transposed_w, scale):
        torch.manual_seed(0)  # the same data for the same example, as hypothesis requires
        (x, w, b), g = make((*lead, din), dout, dtype, bias, scale)
        x = strided(x) if strided_x else x  # every other element of a wider buffer
        w = w.t().contiguous().t() if transposed_w else w  # column-major (Dout, Din)
        check([x, w, b], g, engine)

    prop()


@needs_ext
@pytest.mark.parametrize("engine", ENGINES)
def test_sum_loss_expanded_cotangent(engine):
    # y.sum() hands the backward an expanded (stride-0) cotangent.
    (x, w, b), _ = make((2, 9, 6), 5, torch.float32)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    with mk.use_backend("cpu"), mk.use_cpu_gemm_engine(engine):
        grads = torch.autograd.grad(mk.linear(*leaves).sum(), leaves)
    for a, r in zip(grads, torch.autograd.grad(linear_ref(*leaves).sum(), leaves), strict=True):
        assert_close(a, r)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_ext)])
def test_gradcheck(backend):
    # float64 runs ATen's GEMMs on either engine; the oneDNN ones are held to float32 TOL above.
    (x, w, b), _ = make((2, 3, 4), 5, torch.float64, scale=2.0)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    with mk.use_backend(backend):
        assert torch.autograd.gradcheck(mk.linear, leaves)
        assert torch.autograd.gradcheck(mk.linear, leaves[:2])  # no bias
        assert torch.autograd.gradcheck(mk.linear, [leaves[0][0, 0], leaves[1], leaves[2]])  # 1-D x


@needs_ext
@pytest.mark.parametrize("engine", ENGINES)
def test_opcheck(engine):
    op, bwd = torch.ops.mdt_kernels.linear, torch.ops.mdt_kernels.linear_backward
    with mk.use_cpu_gemm_engine(engine):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for x_shape in [(2, 6, 5), (5,)]:
                for bias in (True, False):
                    (x, w, b), g = make(x_shape, 7, dtype, bias)
                    leaves = [None if t is None else t.requires_grad_() for t in (x, w, b)]
                    torch.library.opcheck(op, tuple(leaves))
                    torch.library.opcheck(op, (x.detach(), w.detach(), None if b is None else b.detach()))
                    torch.library.opcheck(bwd, (g, x.detach(), w.detach(), bias))


def _onednn_isa_capped():
    """True when ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) keeps oneDNN below its AVX-512 kernels."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return bool(cap) and cap not in ("ALL", "DEFAULT") and not cap.startswith(("AVX512", "AVX10"))


def _amd_cpu():
    """The CPU's vendor from /proc/cpuinfo (Linux); False where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            vendors = {line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")}
    except OSError:
        return False
    return bool(vendors & {"AuthenticAMD", "HygonGenuine"})


def expected_engine(setting, dtype, forward_layout=True):
    """What the engine must be, from PyTorch's own view of this CPU (not from our extension's engine code):
    oneDNN runs fp32 always, and bf16 only with AVX-512 (PyTorch's mkldnn bf16 device check) and no ISA
    cap below it; mdt runs fp32. auto takes mdt for fp32 forward GEMMs on an AMD CPU at the AVX2
    capability of our kernels, else oneDNN for fp32 with AVX-512 or (forward GEMMs) on an AMD CPU, and
    oneDNN for bf16 wherever it runs."""
    if setting == "aten" or (setting == "mdt" and dtype != torch.float32):
        return "aten"
    if setting == "mdt" or (setting == "auto" and dtype == torch.float32 and _amd_cpu() and forward_layout
                            and mk.cpu_capability() == "avx2"):
        return "mdt"
    if not HAS_ONEDNN:
        return "aten"
    avx512 = torch.cpu._is_avx512_supported() and not _onednn_isa_capped()
    runs = {torch.float32: True, torch.bfloat16: bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and avx512}
    if not runs.get(dtype, False):
        return "aten"
    if setting == "onednn" or dtype == torch.bfloat16:
        return "onednn"
    return "onednn" if avx512 or (_amd_cpu() and forward_layout) else "aten"


ENGINE_EVENTS = {"onednn": "mkldnn::_linear_pointwise", "mdt": "mdt_kernels::gemm_f32"}


@needs_ext
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", list(ALL_DTYPES.values()), ids=list(ALL_DTYPES))
def test_engine_runs_what_it_says(engine, dtype):
    # No silent fallback: the engine cpu_gemm_engine reports for the dtype is the one PyTorch's view of
    # this CPU calls for, and the ones that run the forward and dx GEMMs are those expected for their
    # layouts (counted in the profiler: oneDNN's op, or mdt's record); a dtype an engine cannot run here
    # never reaches it, so no setting can crash.
    (x, w, b), g = make((3, 8, 16), 12, dtype)
    with mk.use_cpu_gemm_engine(engine):
        reported = mk.cpu_gemm_engine(dtype)
        assert mk.cpu_gemm_engine()[str(dtype).removeprefix("torch.")] == reported
    assert reported == expected_engine(engine, dtype)
    with torch.profiler.profile() as prof:
        run([x, w, b], g, engine)
    names = [e.name for e in prof.events()]
    expected = [expected_engine(engine, dtype, forward_layout) for forward_layout in (True, False)]
    for name, event in ENGINE_EVENTS.items():
        assert names.count(event) == expected.count(name), (name, expected)


@needs_ext
def test_engine_selection():
    default = mk.cpu_gemm_setting()
    assert default == os.environ.get("MDT_KERNELS_CPU_GEMM", "auto")
    before = mk.cpu_gemm_engine()
    assert set(before.values()) <= {"mdt", "onednn", "aten"}
    with mk.use_cpu_gemm_engine("aten"):
        assert mk.cpu_gemm_setting() == "aten"
        assert set(mk.cpu_gemm_engine().values()) == {"aten"}
    assert mk.cpu_gemm_setting() == default and mk.cpu_gemm_engine() == before
    with pytest.raises(ValueError, match="unknown CPU GEMM engine 'blas'"):
        mk.use_cpu_gemm_engine("blas")
    with pytest.raises(ValueError, match='unknown CPU GEMM engine "blas"'):
        torch.ops.mdt_kernels.set_cpu_gemm_engine("blas")
    assert mk.cpu_gemm_setting() == default


@needs_ext
@pytest.mark.parametrize("value,expected",
                         [("aten", "aten"), ("onednn", "onednn"), ("auto", "auto"), ("mdt", "mdt"),
                          ("gemm", "MDT_KERNELS_CPU_GEMM: unknown CPU GEMM engine")])
def test_engine_environment_variable(value, expected):
    if value == "onednn" and not HAS_ONEDNN:
        pytest.skip("this PyTorch has no oneDNN")
    code = ("import torch, mdt_kernels as mk\n"
            "try:\n    print(mk.cpu_gemm_setting(), mk.cpu_gemm_engine())\n"
            "except ValueError as e:\n    print(e)\n")
    env = {**os.environ, "MDT_KERNELS_CPU_GEMM": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


@needs_ext
def test_cpu_results_repeat_exactly():
    (x, w, b), g = make((10, 100, 24), 40, torch.float32)
    first = run([x, w, b], g, mk.cpu_gemm_setting())
    for a, r in zip(run([x, w, b], g, mk.cpu_gemm_setting()), first, strict=True):
        assert torch.equal(a, r)


@needs_ext
def test_autocast_bf16():
    # fp32 leaves under bf16 autocast: like F.linear, the op runs in bf16 and the gradients reach the fp32
    # leaves in fp32 through the casts; float64 inputs are left alone.
    (x, w, b), _ = make((2, 7, 12), 9, torch.float32)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    g = torch.randn(2, 7, 9, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with mk.use_backend("cpu"):
            y = mk.linear(*leaves)
        y_ref = linear_ref(*leaves)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y, y_ref, torch.bfloat16)
    for a, r, t in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_ref, leaves, g), leaves, strict=True):
        assert a.dtype == t.dtype == torch.float32
        assert_close(a, r, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), mk.use_backend("cpu"):
        assert mk.linear(x.detach(), w.detach().bfloat16(), None).dtype == torch.bfloat16
        y64 = mk.linear(*as_float64([x.detach(), w.detach(), b.detach()]))
    assert y64.dtype == torch.float64


@needs_ext
def test_torch_compile_fullgraph():
    (x, w, b), g = make((2, 6, 5), 7, torch.float32)

    def f(op, x, w, b):
        return op(x * 2, w, b.sin()).cos()

    compiled = torch.compile(f, fullgraph=True)
    with mk.use_backend("cpu"):
        y, grads = forward_and_grads(lambda *a: compiled(mk.linear, *a), [x, w, b], [0, 1, 2], g)
    y_ref, grads_ref = forward_and_grads(lambda *a: f(linear_ref, *a), [x, w, b], [0, 1, 2], g)
    assert_close(y, y_ref)
    for a, r in zip(grads, grads_ref, strict=True):
        assert_close(a, r)


@needs_ext
def test_compile_does_not_specialise_the_row_count():
    w, b = torch.randn(6, 4), torch.randn(6)
    assert compile_frame_count(lambda x: mk.linear(x, w, b), [(torch.randn(2, n, 4),) for n in (9, 8, 7, 6)]) <= 2


def test_no_kernel_of_the_backend_runs_the_reference():
    # linear has no GPU or Triton kernel by design (cuBLAS is F.linear's): it declares its reference its
    # implementation there. A backend that cannot run the tensors at all still says so.
    (x, w, b), _ = make((2, 3), 4, torch.float32)
    if mk._dispatch.unavailable_reason("triton", "cpu") is None:
        with mk.use_backend("triton"):
            assert torch.equal(mk.linear(x, w, b), linear_ref(x, w, b))
    with mk.use_backend("cuda"), pytest.raises(mk.BackendError, match="cannot run"):
        mk.linear(x, w, b)


BAD = LINEAR_BAD_INPUTS


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_ext)])
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    (x, w, b), _ = make((4, 5), 3, torch.float32)
    with mk.use_backend(backend), pytest.raises(exc, match=match):
        mk.linear(*mutate(x, w, b))


@needs_ext
def test_cpp_op_checks_inputs_itself():
    (x, w, b), g = make((2, 4, 5), 3, torch.float32)
    op, bwd = torch.ops.mdt_kernels.linear, torch.ops.mdt_kernels.linear_backward
    with pytest.raises(ValueError, match="but x has 4 input features"):
        op(x[..., :4], w, b)
    with pytest.raises(ValueError, match="bias has 2 elements"):
        op(x, w, b[:2])
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        op(x, w[0], b)
    with pytest.raises(ValueError, match="bias must have 1 dimensions"):
        op(x, w, b[None])
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        op(x[0, 0, 0], w, b)
    with pytest.raises(TypeError, match="x and weight must have the same dtype"):
        op(x, w.double(), b)
    with pytest.raises(TypeError, match="x and bias must have the same dtype"):
        op(x, w, b.double())
    with pytest.raises(TypeError, match="x must be float32"):
        op(x.long(), w.long(), None)
    with pytest.raises(ValueError, match="grad shape"):
        bwd(g[:1], x, w, True)
    with pytest.raises(TypeError, match="x and grad must have the same dtype"):
        bwd(g.half(), x, w, True)


def test_reference_is_f_linear():
    x, w, b = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64), torch.randn(7)
    torch.testing.assert_close(linear_ref(x, w, b.double()), x @ w.T + b.double())
    torch.testing.assert_close(F.linear(x, w), linear_ref(x, w))


def test_reference_gradients_without_input_features():
    assert_gradients_without_input_features(linear_ref, lambda b: b)
