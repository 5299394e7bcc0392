"""mdt_kernels.adan_step on every backend against the independent float64 oracle (tests/adan_oracle.py)."""

import math

import pytest
import torch
from adan_oracle import AdanOracle
from helpers import (
    CPU_BACKENDS,
    TOL,
    backend_device_pairs,
    compiled_backends,
    is_interpreted,
    nan_filled_memory,
    op_namespace,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import mdt_kernels as mk
from mdt_kernels.ops import adan as adan_ops

PAIRS = backend_device_pairs(("reference", "cpu", "cuda", "triton"))
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# (param dtype, state dtype): fp32 state by default, state in the param dtype as the option.
DTYPES = {"f32": (F32, F32), "bf16": (BF16, F32), "f16": (F16, F32), "bf16-bf16": (BF16, BF16),
          "f16-f16": (F16, F16), "f64": (F64, F64)}
# Sizes include 0 and 1 elements, tails of every vector width, and tensors spanning several chunks of
# the interpreted Triton kernel (512) and, in test_large_tensor_chunks, of the C++ kernel (32768).
SHAPES = [(3, 5), (1,), (0,), (1100,), (2, 33, 7), (17,)]
HYPER = dict(lr=5e-2, betas=(0.98, 0.92, 0.99), eps=1e-3)  # eps large enough to see where it goes


def make_state(shapes, p_dtype, s_dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device, p_dtype) for s in shapes]
    states = [[torch.zeros(s, dtype=s_dtype, device=device) for s in shapes] for _ in range(4)]
    return params, states


def grads_for(params, step, scale=1.0):
    gen = torch.Generator().manual_seed(1000 + step)
    return [(scale * torch.randn(p.shape, generator=gen)).to(p.device, p.dtype) for p in params]


def tolerance(dtype):
    """fp32: the kernels compute in fp32, the oracle in fp64. 16-bit: TOL (a couple of ulps; fp32 math
    can flip a rounding of the stored value now and then)."""
    return dict(atol=2e-5, rtol=2e-5) if dtype == F32 else TOL[dtype]


def assert_matches(params, states, oracle):
    for i, p in enumerate(params):
        got = [p] + [s[i] for s in states]
        want = (oracle.p[i], oracle.m[i], oracle.n[i], oracle.v[i], oracle.neg_prev[i])
        for name, x, y in zip(("param",) + adan_ops.STATE_NAMES, got, want, strict=True):
            torch.testing.assert_close(x.double().cpu(), y, **tolerance(x.dtype),
                                       msg=lambda m, what=f"{name}[{i}]": f"{what}: {m}")


def run_steps(backend, device, params, states, oracle, steps, clip=None, **opts):
    for t in range(1, steps + 1):
        grads = grads_for(params, t)
        coef = None if clip is None else torch.tensor(clip[t - 1], device=device)
        mk.adan_step(params, grads, *states, step=t, clip_coef=coef, backend=backend, **HYPER, **opts)
        oracle.step([g.cpu() for g in grads], coef=1.0 if clip is None else clip[t - 1])


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtypes", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("no_prox", [False, True], ids=["prox", "no_prox"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.4], ids=["wd0", "wd"])
def test_matches_oracle(backend, device, dtypes, no_prox, weight_decay):
    p_dtype, s_dtype = dtypes
    interpreted = is_interpreted(backend, device)
    if backend == "triton" and p_dtype == F64:
        pytest.skip("the triton backend takes no float64 (test_triton_rejects_float64)")
    steps = 3 if interpreted else 5
    params, states = make_state(SHAPES, p_dtype, s_dtype, device)
    oracle = AdanOracle([p.cpu() for p in params], weight_decay=weight_decay, no_prox=no_prox,
                        state_dtypes=[s_dtype] * len(params), truncate_bf16=interpreted, **HYPER)
    clip = [1.0, 0.25, 1.0, 0.5, 0.125]  # clip coefficients as the optimizer would pass them
    run_steps(backend, device, params, states, oracle, steps, clip, weight_decay=weight_decay, no_prox=no_prox)
    assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_mixed_dtypes_and_shapes_in_one_call(backend, device):
    """One call with params of several dtypes and state dtypes: grouped per dtype internally."""
    interpreted = is_interpreted(backend, device)
    specs = [((40,), F32, F32), ((3, 7), BF16, F32), ((1,), F16, F32), ((600,), BF16, BF16), ((0,), F32, F32),
             ((5, 5), F16, F16), ((9,), F32, F32)]
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen).to(device, pd) for s, pd, _ in specs]
    states = [[torch.zeros(s, dtype=sd, device=device) for s, _, sd in specs] for _ in range(4)]
    oracle = AdanOracle([p.cpu() for p in params], state_dtypes=[sd for _, _, sd in specs],
                        truncate_bf16=interpreted, **HYPER)
    run_steps(backend, device, params, states, oracle, 3)
    assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("cpu", "cuda")))
def test_large_tensor_chunks(backend, device):
    """Tensors spanning several chunks of the compiled kernels, with tails of every width."""
    shapes = [(70001,), (32768,), (32769,), (15,), (1, 65537)]
    params, states = make_state(shapes, F32, F32, device)
    oracle = AdanOracle([p.cpu() for p in params], weight_decay=0.02, **HYPER)
    run_steps(backend, device, params, states, oracle, 2, weight_decay=0.02)
    assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_clip_coef_changes_nothing(backend, device, bad):
    params, states = make_state([(5,), (300,)], F32, F32, device)
    for s in states:
        for t in s:
            t.normal_()
    before = [t.clone() for t in params + [t for s in states for t in s]]
    grads = grads_for(params, 1)
    mk.adan_step(params, grads, *states, step=3, clip_coef=torch.tensor(bad, device=device), backend=backend,
                 **HYPER)
    after = params + [t for s in states for t in s]
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_first_step_ignores_neg_pre_grad(backend, device):
    """first=True means d = 0: the stored neg_pre_grad (here NaN) is neither read nor kept."""
    params, states = make_state([(7,), (130,)], F32, F32, device)
    for t in states[3]:
        t.fill_(float("nan"))
    oracle = AdanOracle([p.cpu() for p in params], **HYPER)
    grads = grads_for(params, 1)
    mk.adan_step(params, grads, *states, step=1, backend=backend, **HYPER)
    oracle.step([g.cpu() for g in grads])
    assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_grads_are_read_only(backend, device):
    params, states = make_state([(6,), (50,)], F32, F32, device)
    grads = grads_for(params, 1)
    copies = [g.clone() for g in grads]
    mk.adan_step(params, grads, *states, step=1, clip_coef=torch.tensor(0.5, device=device), backend=backend,
                 **HYPER)
    for g, c in zip(grads, copies, strict=True):
        torch.testing.assert_close(g, c, atol=0, rtol=0)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_leaf_params_that_require_grad(backend, device):
    """As an optimizer passes them: updated in place, still leaves, no autograd history."""
    params, states = make_state([(6,), (40,)], F32, F32, device)
    params = [p.requires_grad_() for p in params]
    before = [p.detach().clone() for p in params]
    mk.adan_step(params, grads_for(params, 1), *states, step=1, backend=backend, **HYPER)
    assert all(p.is_leaf and p.grad_fn is None and p.requires_grad for p in params)
    assert all(not torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_non_contiguous_layouts(backend, device):
    """A permuted dense parameter (state sharing its strides) and a strided slice: both updated in place."""
    base = torch.randn(12, 9, device=device)
    permuted = torch.randn(9, 12, device=device).t()  # dense, column-major
    sliced = base[:, ::3]  # not dense
    params = [permuted, sliced]
    states = [[torch.zeros_like(p) for p in params] for _ in range(4)]  # zeros_like keeps the permuted strides
    oracle = AdanOracle([p.cpu() for p in params], **HYPER)
    grads = [torch.randn(p.shape, device=device) for p in params]
    mk.adan_step(params, grads, *states, step=1, backend=backend, **HYPER)
    oracle.step([g.cpu() for g in grads])
    assert_matches(params, states, oracle)
    torch.testing.assert_close(base[:, ::3], sliced)  # written through to the base tensor


def _restride_unit_dims(t: torch.Tensor, stride: int = 7) -> torch.Tensor:
    """The same elements in the same memory order, with another stride on every size-1 dimension."""
    strides = [stride if n == 1 else s for s, n in zip(t.stride(), t.shape, strict=True)]
    return t.as_strided(t.shape, strides)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_size_one_dims_with_other_strides(backend, device):
    """Gradients and state may differ from their parameter in the strides of size-1 dimensions only (what
    compiled backward hands back for a (D, 1, p, p) conv weight or a (1, N, D) embedding): same element
    order, so every backend must take them as they are and update correctly."""
    shapes = [(16, 1, 2, 2), (1, 5, 3), (1, 1, 8), (4, 1)]
    params, states = make_state(shapes, F32, F32, device)
    oracle = AdanOracle([p.cpu() for p in params], **HYPER)
    for t in range(1, 3):
        grads = [_restride_unit_dims(g) for g in grads_for(params, t)]
        assert all(g.stride() != p.stride() for g, p in zip(grads, params, strict=True))
        mk.adan_step(params, grads, *states, step=t, backend=backend, **HYPER)
        oracle.step([g.cpu() for g in grads])
    assert_matches(params, states, oracle)
    if backend in ("cpu", "cuda", "cuda_sim"):  # the registered op itself takes them, for the state too
        states = [[_restride_unit_dims(s) for s in lst] for lst in states]
        grads = grads_for(params, 3)
        (b1, b2, b3), t = HYPER["betas"], 3
        op_namespace(backend).adan_step_(params, [_restride_unit_dims(g, 3) for g in grads], *states,
                                         torch.ones((), device=device), HYPER["lr"], b1, b2, b3, 1 - b1**t,
                                         1 - b2**t, math.sqrt(1 - b3**t), HYPER["eps"], 0.0, False, False)
        oracle.step([g.cpu() for g in grads])
        assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_unaligned_views(backend, device):
    """Parameters that are views at odd offsets of a larger buffer: the kernels' vector paths need
    16-byte alignment and must fall back (CUDA: scalar loop; Triton: no alignment hints)."""
    buf = torch.randn(2000, device=device)
    params = [buf[1:34], buf[35:1135], buf[1200:1203]]
    states = [[torch.zeros_like(p) for p in params] for _ in range(4)]
    oracle = AdanOracle([p.cpu() for p in params], **HYPER)
    run_steps(backend, device, params, states, oracle, 2)
    assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference", "cpu", "cuda")))
@settings(max_examples=30, deadline=None, derandomize=True)  # a decorator: the first example obeys it too
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=5),
       lr=st.floats(1e-4, 0.1), b1=st.floats(0.0, 0.999), b2=st.floats(0.0, 0.999), b3=st.floats(0.5, 0.999),
       wd=st.floats(0.0, 0.5), no_prox=st.booleans(), step=st.integers(1, 500), first=st.booleans(),
       coef=st.floats(0.01, 1.0))
def test_property_one_step_from_any_state(backend, device, sizes, lr, b1, b2, b3, wd, no_prox, step, first, coef):
    """One step from random state at any step number and hyper-parameters."""
    first = first or step == 1  # a first step of the group always re-seeds (sail-sg; the oracle does too)
    gen = torch.Generator().manual_seed(len(sizes) + step)
    params = [torch.randn(n, generator=gen).to(device) for n in sizes]
    states = [[torch.randn(n, generator=gen).to(device) for n in sizes] for _ in range(4)]
    for t in states[1]:
        t.abs_().add_(0.1)  # exp_avg_sq > 0 and, with b3 >= 0.5, no denominator near 0 (fp32 vs fp64 cancellation)
    oracle = AdanOracle([p.cpu() for p in params], lr=lr, betas=(b1, b2, b3), eps=1e-8, weight_decay=wd,
                        no_prox=no_prox)
    oracle.t = step - 1
    oracle.m, oracle.n, oracle.v = ([t.double().cpu() for t in s] for s in states[:3])
    oracle.neg_prev = [None if first else t.double().cpu() for t in states[3]]
    grads = [torch.randn(n, generator=gen).to(device) for n in sizes]
    mk.adan_step(params, grads, *states, lr=lr, betas=(b1, b2, b3), eps=1e-8, weight_decay=wd, no_prox=no_prox,
                 step=step, first=first, clip_coef=torch.tensor(coef, device=device), backend=backend)
    oracle.step([g.cpu() for g in grads], coef=coef)
    assert_matches(params, states, oracle)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("triton",)))
def test_triton_tables_follow_new_gradient_tensors(backend, device):
    """The address tables are cached by address: fresh gradient tensors each step must be picked up."""
    params, states = make_state([(33,), (700,)], F32, F32, device)
    oracle = AdanOracle([p.cpu() for p in params], **HYPER)
    run_steps(backend, device, params, states, oracle, 3)  # grads_for allocates new tensors every step
    assert_matches(params, states, oracle)


def _sample(device, p_dtype=F32, s_dtype=F32):
    params, states = make_state([(4, 3), (5,)], p_dtype, s_dtype, device)
    grads = grads_for(params, 1)
    return (params, grads, *states, torch.tensor(0.5, device=device), 1e-2, 0.98, 0.92, 0.99, 0.02, 0.0784,
            math.sqrt(0.0199), 1e-8, 0.01, False, True)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("cpu", "cuda", "triton")))
def test_opcheck(backend, device):
    op = torch.ops.mdt_kernels.adan_step_triton if backend == "triton" else op_namespace(backend).adan_step_
    for dtypes in ((F32, F32), (BF16, F32)):
        torch.library.opcheck(op, _sample(device, *dtypes), test_utils=("test_schema", "test_faketensor"))


BAD = [
    ("length", lambda a: a.update(grads=a["grads"][:1]), ValueError, "grads has 1 tensors"),
    ("grad shape", lambda a: a["grads"].__setitem__(0, torch.zeros(3)), ValueError, r"grads\[0\]"),
    ("grad dtype", lambda a: a["grads"].__setitem__(0, a["grads"][0].double()), ValueError, r"grads\[0\]"),
    ("state dtype", lambda a: a["exp_avg"].__setitem__(1, a["exp_avg"][1].double()), ValueError, r"exp_avg\[1\]"),
    ("state f16 for f32", lambda a: [a[k].__setitem__(0, a[k][0].half()) for k in adan_ops.STATE_NAMES], TypeError,
     "float32 or the parameter's"),
    ("integer param", lambda a: a["params"].__setitem__(0, a["params"][0].long()), TypeError, "floating-point"),
    ("sparse grad", lambda a: a["grads"].__setitem__(0, a["grads"][0].to_sparse()), RuntimeError, "sparse"),
    ("step 0", lambda a: a.update(step=0), ValueError, "step must be >= 1"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(backend, case, mutate, exc, match):
    params, states = make_state([(4, 3), (5,)], F32, F32, "cpu")
    args = dict(params=params, grads=grads_for(params, 1), step=1, **dict(zip(adan_ops.STATE_NAMES, states,
                                                                             strict=True)))
    mutate(args)
    with pytest.raises(exc, match=match):
        mk.adan_step(args.pop("params"), args.pop("grads"), *[args.pop(k) for k in adan_ops.STATE_NAMES],
                     backend=backend, **args, **HYPER)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("triton",)))
def test_triton_rejects_float64(backend, device):
    params, states = make_state([(4,)], F64, F64, device)
    with pytest.raises(TypeError, match="not float64"):
        mk.adan_step(params, grads_for(params, 1), *states, step=1, backend=backend, **HYPER)


def test_unavailable_backend_raises():
    params, states = make_state([(4,)], F32, F32, "cpu")
    with pytest.raises(mk.BackendError, match="cuda"):
        mk.adan_step(params, grads_for(params, 1), *states, step=1, backend="cuda", **HYPER)


@pytest.mark.parametrize("backend", compiled_backends())
def test_cpp_op_checks_inputs_itself(backend):
    """The registered op is callable directly: it must refuse what the flat-memory kernel cannot handle."""
    args = list(_sample("cpu"))
    bad_strides = list(args)
    bad_strides[2] = [torch.zeros(3, 4).t(), args[2][1]]  # exp_avg[0] permuted, param[0] contiguous
    with pytest.raises(ValueError, match="strides"):
        op_namespace(backend).adan_step_(*bad_strides)
    bad_coef = list(args)
    bad_coef[6] = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="clip_coef"):
        op_namespace(backend).adan_step_(*bad_coef)
    bad_state = list(args)
    bad_state[3] = [t.half() for t in args[3]]
    with pytest.raises(TypeError, match="share one dtype"):
        op_namespace(backend).adan_step_(*bad_state)


# ---------------------------------------------------------------------------------------------------
# The global gradient norm (Adan's clipping and finiteness test)

NORM_BACKENDS = backend_device_pairs(("reference", "cpu", "cuda"))


@pytest.mark.parametrize("backend,device", NORM_BACKENDS)
def test_global_norm(backend, device):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(40, 30, generator=gen)
    tensors = [torch.randn(70001, generator=gen), torch.randn(3, 5, generator=gen).to(BF16), torch.zeros(0),
               torch.randn(1, generator=gen).to(F16), base[:, ::3], base.t(), torch.randn(17, generator=gen).double()]
    tensors = [t.to(device) for t in tensors]
    expected = math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))
    got = adan_ops.global_norm(tensors, backend)
    assert got.dtype == F32 and got.shape == () and got.device.type == device
    assert math.isclose(float(got), expected, rel_tol=1e-6)


@pytest.mark.parametrize("backend,device", NORM_BACKENDS)
@pytest.mark.parametrize("bad,expected", [(float("nan"), "nan"), (float("inf"), "inf"), (1e30, "inf")])
def test_global_norm_nonfinite(backend, device, bad, expected):
    """NaN and inf propagate; squares beyond float32 overflow to inf (as torch's fp32 norm does)."""
    tensors = [torch.randn(100, device=device), torch.randn(33000, device=device)]
    tensors[1][32999] = bad
    assert str(float(adan_ops.global_norm(tensors, backend))) == expected


@pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None, reason="C++ extension not built")
def test_multi_tensor_l2_norm_op():
    tensors = [torch.randn(4, 3), torch.randn(5).to(BF16)]
    torch.library.opcheck(torch.ops.mdt_kernels.multi_tensor_l2_norm, (tensors,),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(TypeError, match="float32"):
        torch.ops.mdt_kernels.multi_tensor_l2_norm([torch.ones(3, dtype=torch.int64)])


# Empty parameter lists and empty parameters among others, with uninitialised memory NaN-filled.
EMPTY_SHAPES = {"empty-list": [], "all-empty": [(0,), (3, 0)], "mixed": [(0,), (5,), (2, 0, 4), (3, 3)]}


@pytest.mark.parametrize("backend,device", backend_device_pairs(("reference", "cpu", "cuda", "triton")))
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shapes", EMPTY_SHAPES.values(), ids=EMPTY_SHAPES.keys())
@pytest.mark.parametrize("first", [True, False], ids=["first", "later"])
def test_adan_step_empty(shapes, dtype, backend, device, first):
    def state():
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        grads = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        states = [[torch.rand(s, generator=gen).to(device) for s in shapes] for _ in adan_ops.STATE_NAMES]
        return params, grads, states

    with nan_filled_memory():
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
