"""mdt.optim.Adan: fused and reference paths against the independent float64 oracle (tests/adan_oracle.py)
and each other, state dicts (own and sail-sg's format), restart, parameters without gradients, the
non-finite policy, and (with a GPU) the absence of host syncs."""

import copy
import io
import math

import pytest
import torch
from adan_oracle import AdanOracle
from helpers import TOL, backend_device_pairs, is_interpreted

import mdt_kernels as mk
from mdt.optim import Adan
from mdt_kernels.ops import adan as adan_ops

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
SHAPES = [(8, 6), (6,), (1,), (0,), (3, 4, 5), (40,)]
HYPER = dict(lr=5e-2, betas=(0.98, 0.92, 0.99), eps=1e-3)
# A path: "reference" (fused=False) or a fused backend forced with use_backend.
PATHS = [pytest.param("reference", "cpu", id="reference-cpu")] + backend_device_pairs(("cpu", "cuda", "triton"))


def make_params(dtype=F32, device="cpu", shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes]


def grads_for(params, step):
    """Gradients of step `step`; every other step is small, so clipping at 1.0 acts on some steps only."""
    gen = torch.Generator().manual_seed(1000 + step)
    scale = 1.0 if step % 2 else 0.01
    return [(scale * torch.randn(p.shape, generator=gen)).to(p.device, p.dtype) for p in params]


def make_opt(path, params, **kw):
    return Adan(params, fused=path != "reference", **{**HYPER, **kw})


def opt_step(path, opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    with mk.use_backend(path if path != "reference" else "auto"):
        opt.step()


def assert_matches_oracle(params, opt, oracle, **tol):
    for i, p in enumerate(params):
        t = tol or (dict(atol=2e-5, rtol=2e-5) if p.dtype == F32 else TOL[p.dtype])
        torch.testing.assert_close(p.detach().double().cpu(), oracle.p[i], **t, msg=lambda m, i=i: f"param {i}: {m}")
        state = opt.state[p]
        for key, want in zip(adan_ops.STATE_NAMES, (oracle.m[i], oracle.n[i], oracle.v[i], oracle.neg_prev[i]),
                             strict=True):
            got = state[key].double().cpu()
            st = tol or (dict(atol=2e-5, rtol=2e-5) if state[key].dtype == F32 else TOL[state[key].dtype])
            torch.testing.assert_close(got, want, **st, msg=lambda m, k=key, i=i: f"{k}[{i}]: {m}")


# ---------------------------------------------------------------------------------------------------
# The update rule


@pytest.mark.parametrize("path,device", PATHS)
@pytest.mark.parametrize("no_prox", [False, True], ids=["prox", "no_prox"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.4], ids=["wd0", "wd"])
@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["noclip", "clip"])
def test_matches_oracle(path, device, no_prox, weight_decay, max_grad_norm):
    steps = 3 if is_interpreted(path, device) else 8
    params = make_params(device=device)
    opt = make_opt(path, params, weight_decay=weight_decay, no_prox=no_prox, max_grad_norm=max_grad_norm)
    oracle = AdanOracle([p.cpu() for p in params], weight_decay=weight_decay, no_prox=no_prox,
                        max_grad_norm=max_grad_norm, **HYPER)
    for t in range(1, steps + 1):
        grads = grads_for(params, t)
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert_matches_oracle(params, opt, oracle)
    assert opt.param_groups[0]["step"] == steps


@pytest.mark.parametrize("path,device", PATHS)
@pytest.mark.parametrize("dtype,state_dtype", [(BF16, F32), (F16, F32), (BF16, None), (F16, None)],
                         ids=["bf16-f32state", "f16-f32state", "bf16-bf16state", "f16-f16state"])
def test_low_precision_params(path, device, dtype, state_dtype):
    params = make_params(dtype, device)
    opt = make_opt(path, params, weight_decay=0.1, max_grad_norm=1.0, state_dtype=state_dtype)
    sd = [dtype if state_dtype is None else F32] * len(params)
    oracle = AdanOracle([p.cpu() for p in params], weight_decay=0.1, max_grad_norm=1.0, state_dtypes=sd,
                        truncate_bf16=is_interpreted(path, device), **HYPER)
    for t in range(1, 4):
        grads = grads_for(params, t)
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert all(opt.state[p]["exp_avg"].dtype == sd[0] for p in params)
    assert_matches_oracle(params, opt, oracle)


@pytest.mark.parametrize("backend,device", backend_device_pairs(("cpu", "cuda", "triton")))
@pytest.mark.parametrize("no_prox", [False, True], ids=["prox", "no_prox"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.02], ids=["wd0", "wd"])
@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["noclip", "clip"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_fused_matches_reference_over_many_steps(backend, device, no_prox, weight_decay, max_grad_norm, dtype):
    """Many steps with a restart in the middle: fused and foreach reference stay together."""
    steps = 8 if is_interpreted(backend, device) else 25
    if is_interpreted(backend, device) and dtype == BF16:
        pytest.skip("interpreted Triton truncates to bf16 (covered against the oracle in test_low_precision_params)")
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == F32 else TOL[dtype]
    runs = []
    for path in ("reference", backend):
        params = make_params(dtype, device)
        opt = make_opt(path, params, no_prox=no_prox, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        for t in range(1, steps + 1):
            if t == steps // 2:
                opt.restart_opt()
            opt_step(path, opt, params, grads_for(params, t))
        runs.append((params, opt))
    (ref, ref_opt), (fused, fused_opt) = runs
    for p, q in zip(ref, fused, strict=True):
        torch.testing.assert_close(q, p, **tol)
        for key in adan_ops.STATE_NAMES:
            torch.testing.assert_close(fused_opt.state[q][key], ref_opt.state[p][key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path,device", PATHS)
def test_param_groups_share_global_clipping(path, device):
    params = make_params(device=device)
    a, b = params[:3], params[3:]
    opt = Adan([dict(params=a), dict(params=b, lr=0.01, weight_decay=0.3, no_prox=True)], fused=path != "reference",
               max_grad_norm=1.0, **HYPER)
    oa = AdanOracle([p.cpu() for p in a], **HYPER)
    ob = AdanOracle([p.cpu() for p in b], **{**HYPER, "lr": 0.01}, weight_decay=0.3, no_prox=True)
    clipper = AdanOracle([p.cpu() for p in params], max_grad_norm=1.0, **HYPER)
    for t in range(1, 4):
        grads = grads_for(params, t)
        opt_step(path, opt, params, grads)
        coef = clipper.clip_coef([g.cpu() for g in grads])  # over every parameter of the optimizer
        oa.step([g.cpu() for g in grads[:3]], coef=coef)
        ob.step([g.cpu() for g in grads[3:]], coef=coef)
    assert_matches_oracle(a, opt, oa)
    assert_matches_oracle(b, opt, ob)


@pytest.mark.parametrize("path,device", PATHS)
def test_params_without_grads_are_skipped(path, device):
    """No state for a parameter until its first gradient, which is then a first step (d = 0) for it."""
    params = make_params(device=device)
    opt = make_opt(path, params, max_grad_norm=1.0)
    oracle = AdanOracle([p.cpu() for p in params], max_grad_norm=1.0, **HYPER)
    for t in range(1, 5):
        grads = grads_for(params, t)
        grads = [None if (i == 0 and t < 3) or (i == 4 and t == 2) else g for i, g in enumerate(grads)]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        with mk.use_backend(path if path != "reference" else "auto"):
            opt.step()
        oracle.step([None if g is None else g.cpu() for g in grads])
        if t < 3:
            assert params[0] not in opt.state
    assert_matches_oracle(params, opt, oracle)


@pytest.mark.parametrize("path,device", PATHS)
def test_zero_size_and_one_element_params(path, device):
    params = make_params(device=device, shapes=[(0,), (1,), (0, 3)])
    opt = make_opt(path, params)
    oracle = AdanOracle([p.cpu() for p in params], **HYPER)
    for t in range(1, 3):
        grads = grads_for(params, t)
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert [opt.state[p]["exp_avg"].shape for p in params] == [p.shape for p in params]
    assert_matches_oracle(params, opt, oracle)


@pytest.mark.parametrize("path,device", PATHS)
def test_grads_with_other_strides_on_size_one_dims(path, device):
    """Compiled backward (seen with bf16 autocast) can return the gradient of a (D, 1, p, p) conv weight or
    a (1, N, D) embedding with other strides on its size-1 dimensions; the step must take it as it is."""
    params = make_params(device=device, shapes=[(16, 1, 2, 2), (1, 6, 4), (3, 1)])
    opt = make_opt(path, params, max_grad_norm=1.0)
    oracle = AdanOracle([p.detach().cpu() for p in params], **HYPER, max_grad_norm=1.0)
    for t in range(1, 3):
        grads = [g.as_strided(g.shape, [5 if n == 1 else s for s, n in zip(g.stride(), g.shape, strict=True)])
                 for g in grads_for(params, t)]
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert_matches_oracle(params, opt, oracle)


@pytest.mark.parametrize("path,device", PATHS)
def test_restart_opt(path, device):
    params = make_params(device=device)
    opt = make_opt(path, params, weight_decay=0.1)
    oracle = AdanOracle([p.cpu() for p in params], weight_decay=0.1, **HYPER)
    for t in range(1, 6):
        if t == 3:
            opt.restart_opt()
            oracle.restart()
            assert opt.param_groups[0]["step"] == 0
            assert all(float(opt.state[p]["exp_avg_sq"].abs().sum()) == 0 for p in params)
        grads = grads_for(params, t)
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert opt.param_groups[0]["step"] == 3
    assert_matches_oracle(params, opt, oracle)


@pytest.mark.parametrize("path,device", PATHS)
def test_grads_left_unclipped(path, device):
    params = make_params(device=device)
    opt = make_opt(path, params, max_grad_norm=0.1)
    grads = grads_for(params, 1)
    copies = [g.clone() for g in grads]
    opt_step(path, opt, params, grads)
    for p, c in zip(params, copies, strict=True):
        torch.testing.assert_close(p.grad, c, atol=0, rtol=0)


def test_closure_and_sparse_grads():
    p = torch.nn.Parameter(torch.randn(4))
    opt = Adan([p])
    loss = opt.step(lambda: (p**2).sum().backward() or torch.tensor(3.0))
    assert float(loss) == 3.0
    emb = torch.nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        Adan(emb.parameters()).step()


@pytest.mark.parametrize("kwargs,match", [(dict(lr=-1.0), "learning rate"), (dict(betas=(0.9, 1.0, 0.9)), "betas"),
                                          (dict(betas=(0.9, 0.9)), "betas"), (dict(eps=-1.0), "epsilon"),
                                          (dict(weight_decay=-0.1), "weight_decay"),
                                          (dict(max_grad_norm=-1.0), "max_grad_norm"),
                                          (dict(nonfinite="ignore"), "nonfinite")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adan([torch.nn.Parameter(torch.randn(2))], **kwargs)


def test_fused_none_picks_the_fused_kernel_where_one_exists(monkeypatch):
    if mk._dispatch.unavailable_reason("cpu", "cpu"):
        pytest.skip("C++ extension not built")
    calls = []
    for name in ("reference", "cpu"):
        impl = adan_ops.IMPLS[name]
        monkeypatch.setitem(adan_ops.IMPLS, name, lambda *a, name=name, impl=impl: calls.append(name) or impl(*a))
    for fused, expected in ((None, "cpu"), (True, "cpu"), (False, "reference")):
        params = make_params()
        calls.clear()
        opt = Adan(params, fused=fused)
        opt_step("reference", opt, params, grads_for(params, 1))
        assert set(calls) == {expected}, (fused, calls)


# ---------------------------------------------------------------------------------------------------
# State dicts


@pytest.mark.parametrize("path,device", PATHS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_state_dict_resume_gives_the_same_trajectory(path, device, dtype):
    params = make_params(dtype, device)
    opt = make_opt(path, params, max_grad_norm=1.0, weight_decay=0.1)
    for t in range(1, 4):
        opt_step(path, opt, params, grads_for(params, t))
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    for t in range(4, 7):
        opt_step(path, opt, params, grads_for(params, t))

    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = [p.clone().requires_grad_() for p in ckpt["params"]]
    opt2 = make_opt(path, resumed, max_grad_norm=1.0, weight_decay=0.1)
    opt2.load_state_dict(ckpt["opt"])
    assert all(opt2.state[p]["exp_avg"].dtype == F32 for p in resumed)  # fp32 state survives the reload
    for t in range(4, 7):
        opt_step(path, opt2, resumed, grads_for(resumed, t))
    for p, q in zip(params, resumed, strict=True):
        torch.testing.assert_close(q, p, atol=0, rtol=0)
        for key in adan_ops.STATE_NAMES:
            torch.testing.assert_close(opt2.state[q][key], opt.state[p][key], atol=0, rtol=0)


def test_load_state_dict_rejects_mismatched_shapes():
    params = make_params()
    opt = Adan(params)
    opt_step("reference", opt, params, grads_for(params, 1))
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"] = torch.zeros(3)
    other = make_params()
    opt2 = Adan(other)
    with pytest.raises(ValueError, match="state 'exp_avg' of saved parameter 0 has shape"):
        opt2.load_state_dict(sd)
    assert len(opt2.state) == 0  # rejected before anything was loaded


def _sail_sg_state_dict(params, step, dtype):
    """A state dict as sail-sg/Adan saves it: state in the parameters' dtype, its group keys."""
    gen = torch.Generator().manual_seed(7)
    state = {i: {k: (torch.rand(p.shape, generator=gen) if k == "exp_avg_sq" else torch.randn(p.shape, generator=gen)
                     ).to(dtype) for k in adan_ops.STATE_NAMES} for i, p in enumerate(params)}
    group = dict(lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"], weight_decay=0.02, max_grad_norm=1.0,
                 no_prox=False, foreach=True, fused=True, step=step, params=list(range(len(params))))
    return {"state": state, "param_groups": [group]}


@pytest.mark.parametrize("path,device", PATHS)
def test_loads_sail_sg_state_dict(path, device):
    params = make_params(BF16, device)
    sd = _sail_sg_state_dict(params, 5, BF16)
    opt = make_opt(path, params, max_grad_norm=1.0)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["step"] == 5 and opt.param_groups[0]["weight_decay"] == 0.02
    assert opt.param_groups[0]["fused"] == (path != "reference")  # the implementation choice stays ours
    oracle = AdanOracle([p.cpu() for p in params], weight_decay=0.02, max_grad_norm=1.0,
                        truncate_bf16=is_interpreted(path, device), **HYPER)
    oracle.t = 5
    for i in range(len(params)):
        s = sd["state"][i]
        oracle.m[i], oracle.n[i], oracle.v[i] = (s[k].double() for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff"))
        oracle.neg_prev[i] = s["neg_pre_grad"].double()
    for t in range(6, 8):
        grads = grads_for(params, t)
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert_matches_oracle(params, opt, oracle)


def test_state_dict_loads_into_sail_sg():
    """What sail-sg's Adan reads: its group keys and state names; torch's loader casts state to the
    parameters' dtype, which sail-sg's kernels expect."""

    class SailSgAdanStandIn(torch.optim.Optimizer):  # sail-sg's defaults and (torch-inherited) loader
        def __init__(self, params):
            super().__init__(params, dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0,
                                          max_grad_norm=0.0, no_prox=False, foreach=True, fused=False))

    params = make_params(BF16)
    opt = Adan(params, max_grad_norm=1.0)
    opt_step("reference", opt, params, grads_for(params, 1))
    theirs = SailSgAdanStandIn(params)
    theirs.load_state_dict(copy.deepcopy(opt.state_dict()))
    group = theirs.param_groups[0]
    assert {"lr", "betas", "eps", "weight_decay", "max_grad_norm", "no_prox", "foreach", "fused", "step"} <= set(group)
    assert group["step"] == 1 and not group["fused"]  # fused=None saved: sail-sg takes its foreach path
    for p in params:
        assert set(theirs.state[p]) == set(adan_ops.STATE_NAMES)
        assert all(t.dtype == BF16 for t in theirs.state[p].values())


# ---------------------------------------------------------------------------------------------------
# Non-finite gradients


def _snapshot(params, opt):
    return [p.detach().clone() for p in params] + [t.clone() for p in params for t in opt.state[p].values()]


@pytest.mark.parametrize("path,device", PATHS)
@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["noclip", "clip"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_raise_changes_nothing(path, device, max_grad_norm, bad):
    params = make_params(device=device)
    opt = make_opt(path, params, max_grad_norm=max_grad_norm)
    for t in range(1, 3):
        opt_step(path, opt, params, grads_for(params, t))
    before = _snapshot(params, opt)
    grads = grads_for(params, 3)
    grads[4][1, 2, 3] = bad
    msg = r"1 of 6 gradients hold inf or NaN \(the first: parameter 4 of group 0.*no parameter or state"
    with pytest.raises(FloatingPointError, match=msg):
        opt_step(path, opt, params, grads)
    assert opt.param_groups[0]["step"] == 2
    for a, b in zip(_snapshot(params, opt), before, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)


def test_nonfinite_norm_overflow_raises():
    params = make_params()
    opt = Adan(params)
    grads = [torch.full(p.shape, 1e30) for p in params]  # finite, but the fp32 norm overflows
    with pytest.raises(FloatingPointError, match="overflows"):
        opt_step("reference", opt, params, grads)


@pytest.mark.parametrize("path,device", PATHS)
@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0], ids=["noclip", "clip"])
def test_nonfinite_skip(path, device, max_grad_norm):
    """The step is skipped on the device: params and state untouched, the step counter advances, the
    skip is counted, and later steps go on as the oracle does with the same counter."""
    params = make_params(device=device)
    opt = make_opt(path, params, max_grad_norm=max_grad_norm, nonfinite="skip")
    oracle = AdanOracle([p.cpu() for p in params], max_grad_norm=max_grad_norm, **HYPER)
    for t in range(1, 6):
        grads = grads_for(params, t)
        if t == 3:
            grads[2][0] = float("nan")
            before = _snapshot(params, opt)
            opt_step(path, opt, params, grads)
            for a, b in zip(_snapshot(params, opt), before, strict=True):
                torch.testing.assert_close(a, b, atol=0, rtol=0)
            oracle.t += 1  # the skipped step still counts for the bias corrections
            continue
        opt_step(path, opt, params, grads)
        oracle.step([g.cpu() for g in grads])
    assert opt.skipped_steps() == 1
    assert opt.param_groups[0]["step"] == 5
    assert_matches_oracle(params, opt, oracle)


@pytest.mark.parametrize("path,device", PATHS)
def test_nonfinite_skip_on_first_step(path, device):
    """A skipped first step leaves zeroed state (not garbage) for the next one."""
    params = make_params(device=device)
    opt = make_opt(path, params, nonfinite="skip")
    grads = grads_for(params, 1)
    grads[0][0, 0] = float("inf")
    opt_step(path, opt, params, grads)
    opt_step(path, opt, params, grads_for(params, 2))
    assert all(bool(torch.isfinite(p).all()) for p in params)
    assert opt.skipped_steps() == 1


# ---------------------------------------------------------------------------------------------------
# No host synchronisation on GPU (runs only where CUDA exists)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_step_has_no_host_sync_and_captures_in_a_graph(backend):
    if mk._dispatch.unavailable_reason(backend, "cuda"):
        pytest.skip(mk._dispatch.unavailable_reason(backend, "cuda"))
    params = make_params(device="cuda")
    twin = [p.detach().clone().requires_grad_() for p in params]
    opt = Adan(params, fused=True, max_grad_norm=1.0, weight_decay=0.02, nonfinite="skip", **HYPER)
    ref = Adan(twin, fused=False, max_grad_norm=1.0, weight_decay=0.02, nonfinite="skip", **HYPER)
    for p in params:  # static gradient tensors, as a captured training step has
        p.grad = torch.zeros_like(p)
    with mk.use_backend(backend):
        for t in range(1, 4):
            grads = grads_for(params, t)
            for p, q, g in zip(params, twin, grads, strict=True):
                p.grad.copy_(g)
                q.grad = g.clone()
            torch.cuda.set_sync_debug_mode("error")  # any synchronising call in step() raises
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            ref.step()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.cuda.graph(graph):  # a host sync would abort the capture
            opt.step()  # step 4 (its scalars are baked into the graph)
        torch.cuda.current_stream().wait_stream(stream)
    grads = grads_for(params, 4)
    for p, q, g in zip(params, twin, grads, strict=True):
        p.grad.copy_(g)
        q.grad = g.clone()
    graph.replay()
    ref.step()
    for p, q in zip(params, twin, strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    assert math.isclose(opt.param_groups[0]["step"], 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_capture_with_raise_policy_explains():
    params = make_params(device="cuda")
    opt = Adan(params, max_grad_norm=1.0, **HYPER)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with pytest.raises(RuntimeError, match="nonfinite='skip'"), torch.cuda.stream(stream), torch.cuda.graph(graph):
        opt.step()
