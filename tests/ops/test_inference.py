"""The CPU inference forms (``mdt_kernels::<op>_inference``): what sampling runs under torch.no_grad() or
inference_mode. Each is its op's forward without what only the backward reads (attention probabilities,
the GELU input h, the LayerNorm mean/rstd); the public function picks it when autograd will not record the
call. Checked here: the choice itself, outputs equal to the training form's (the same kernels, so exactly),
every dtype and odd shape/stride through hypothesis, opcheck, and torch.compile over it."""

import pytest
import torch
from helpers import modulation, strided
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import mdt_kernels as mk

pytestmark = pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None,
                                reason="C++ extension not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class Seen(TorchDispatchMode):
    """The names of the mdt_kernels ops a block calls."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mdt_kernels":
            self.ops.append(func.name().split("::")[-1].split(".")[0])
        return func(*args, **(kwargs or {}))


def _attention(B, K, H, Dh, dtype, G=None, stride=False):
    G = G or 4
    qkv = torch.randn(B, K, 3, H, Dh, dtype=dtype)
    qkv = strided(qkv) if stride else qkv
    table = torch.randn((2 * G - 1) ** 2, H, dtype=dtype)
    ids = torch.stack([torch.randperm(G * G)[:K] for _ in range(B)])
    return qkv, table, G, ids


def cases(B=2, N=5, D=12, dtype=torch.float32, stride=False):
    """op name -> (public function, training form returning the public outputs, inputs)."""
    ops = torch.ops.mdt_kernels
    x = torch.randn(B, N, D, dtype=dtype)
    x = strided(x) if stride else x
    y = torch.randn(B, N, D, dtype=dtype)
    gate, shift, scale = modulation(B, D, 3, dtype, "cpu")
    w, b = torch.randn(7, D, dtype=dtype) / D**0.5, torch.randn(7, dtype=dtype)
    qkv, table, G, ids = _attention(B, min(N, 16), 2, 4, dtype, stride=stride)
    return {
        "linear_gelu": (mk.linear_gelu, lambda *a: ops.linear_gelu(*a)[0], (x, w, b)),
        "rel_pos_attention": (lambda q, t, g, i, s: mk.rel_pos_attention(q, t, g, i, s),
                              lambda *a: ops.rel_pos_attention(*a)[0], (qkv, table, G, ids, 0.5)),
        "adaln_modulate": (mk.adaln_modulate, lambda *a: ops.adaln_modulate(*a)[0], (x, shift, scale, 1e-6)),
        "residual_adaln_modulate": (mk.residual_adaln_modulate, lambda *a: ops.residual_adaln_modulate(*a)[:2],
                                    (x, gate, y, shift, scale, 1e-6)),
    }


OPS = list(cases())


def _equal(a, b):
    a, b = (a, b) if isinstance(a, (tuple, list)) else ((a,), (b,))
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no input requires grad"])
@pytest.mark.parametrize("op", OPS)
def test_chosen_when_no_backward_will_follow(op, mode):
    fn, _, args = cases()[op]
    if mode == "no input requires grad":
        ctx = torch.enable_grad()
    else:
        args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with mk.use_backend("cpu"), ctx, Seen() as seen:
        fn(*args)
    assert seen.ops == [f"{op}_inference"]


@pytest.mark.parametrize("op", OPS)
def test_training_form_when_autograd_records(op):
    fn, _, args = cases()[op]
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    with mk.use_backend("cpu"), Seen() as seen:
        out = fn(*args)
    assert seen.ops == [op]
    sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert all(a.grad is not None for a in args if isinstance(a, torch.Tensor) and a.requires_grad)


@settings(deadline=None, max_examples=25)
@given(B=st.integers(1, 3), N=st.integers(1, 40), D=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       stride=st.booleans(), op=st.sampled_from(OPS))
def test_equals_training_form(B, N, D, dtype, stride, op):
    fn, training, args = cases(B, N, D, dtype, stride)[op]
    with mk.use_backend("cpu"), torch.no_grad():
        _equal(fn(*args), training(*args))


def test_attention_mdt_sizes_on_every_thread_count():
    """The per-thread probability buffers at sampling sizes (several (b, h) blocks per thread)."""
    qkv, table, G, ids = _attention(4, 64, 6, 16, torch.float32, G=8)
    expected = torch.ops.mdt_kernels.rel_pos_attention(qkv, table, G, ids, 0.25)[0]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            _equal(torch.ops.mdt_kernels.rel_pos_attention_inference(qkv, table, G, ids, 0.25), expected)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    for dtype in (torch.float32, torch.bfloat16):
        args = cases(dtype=dtype)[op][2]
        torch.library.opcheck(getattr(torch.ops.mdt_kernels, f"{op}_inference"), args)


def test_bad_input_is_a_python_error():
    qkv, table, G, ids = _attention(2, 5, 2, 4, torch.float32)
    ids[0, 0] = G * G  # out of the grid
    with pytest.raises((ValueError, IndexError, RuntimeError), match="ids_keep"):
        torch.ops.mdt_kernels.rel_pos_attention_inference(qkv, table, G, ids, 0.5)
    x = torch.randn(2, 3, 4)
    with pytest.raises((ValueError, RuntimeError), match="eps"):
        torch.ops.mdt_kernels.adaln_modulate_inference(x, torch.zeros(2, 4), torch.zeros(2, 4), -1.0)


def test_compiled_sampling_forward_uses_it():
    _, training, args = cases()["rel_pos_attention"]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    model = torch.compile(lambda q, t, i: mk.rel_pos_attention(q, t, 4, i, 0.5), fullgraph=True, backend=backend)
    q, t, _, i, _ = args
    with mk.use_backend("cpu"), torch.no_grad():
        out = model(q.requires_grad_(), t, i)
    assert len(graphs) == 1 and "rel_pos_attention_inference" in graphs[0]
    _equal(out, training(*args))
