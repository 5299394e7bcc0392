"""The CPU inference forms (``mdt_kernels::<op>_inference``) of the ops that declare one: what sampling runs
under torch.no_grad() or inference_mode. Each is its op's forward without what only the backward reads
(attention statistics, the GELU input h, the LayerNorm mean/rstd); the dispatcher picks it when autograd
will not record the call. Checked here for every such op, from its declared example calls: the choice
itself, outputs equal to the training form's (the same kernels, so exactly), every dtype and odd
shape/stride through hypothesis, opcheck, and torch.compile over it."""

import pytest
import torch
from helpers import strided
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import mdt_kernels as mk
from mdt_kernels import _registry

pytestmark = pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None,
                                reason="C++ extension not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
OPS = sorted(op for op, decl in _registry.all_ops().items() if decl.inference is not None)
SIZES = _registry.Sizes(B=2, N=9, K=5, D=12, H=2, G=3)


class Seen(TorchDispatchMode):
    """The names and arguments of the mdt_kernels ops a block calls."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mdt_kernels":
            self.ops.append(func.name().split("::")[-1].split(".")[0])
            self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


def example(op, sizes=SIZES, dtype=torch.float32, stride=False):
    """(public function, arguments) of op's first example call; stride: its first tensor a strided view."""
    decl = _registry.get(op)
    args = list(decl.examples(sizes, dtype)[0].args)
    if stride:
        args[0] = strided(args[0])
    return decl.function, args


def _requiring_grad(args):
    return [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def _equal(a, b):
    a, b = (a, b) if isinstance(a, (tuple, list)) else ((a,), (b,))
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)


def test_the_ops_with_an_inference_form():
    assert OPS == ["adaln_modulate", "linear_gelu", "rel_pos_attention", "residual_adaln_modulate"]


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no input requires grad"])
@pytest.mark.parametrize("op", OPS)
def test_chosen_when_no_backward_will_follow(op, mode):
    fn, args = example(op)
    if mode == "no input requires grad":
        ctx = torch.enable_grad()
    else:
        args = _requiring_grad(args)
        ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with mk.use_backend("cpu"), ctx, Seen() as seen:
        fn(*args)
    assert seen.ops == [f"{op}_inference"]


@pytest.mark.parametrize("op", OPS)
def test_training_form_when_autograd_records(op):
    fn, args = example(op)
    args = _requiring_grad(args)
    with mk.use_backend("cpu"), Seen() as seen:
        out = fn(*args)
    assert seen.ops == [op]
    sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    assert all(a.grad is not None for a in args if isinstance(a, torch.Tensor) and a.requires_grad)


@settings(deadline=None, max_examples=25)
@given(B=st.integers(1, 3), N=st.integers(1, 40), D=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       stride=st.booleans(), op=st.sampled_from(OPS))
def test_equals_training_form(B, N, D, dtype, stride, op):
    sizes = _registry.Sizes(B=B, N=N, K=min(N, 16), D=D, H=2, G=4)
    fn, args = example(op, sizes, dtype, stride)
    with mk.use_backend("cpu"):
        with torch.no_grad():
            inference = fn(*args)
        training = fn(*_requiring_grad(args))
    _equal(inference, tuple(t.detach() for t in training) if isinstance(training, tuple) else training.detach())


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    for dtype in (torch.float32, torch.bfloat16):
        fn, args = example(op, dtype=dtype)
        with mk.use_backend("cpu"), torch.no_grad(), Seen() as seen:
            fn(*args)
        ((func, op_args),) = seen.calls
        torch.library.opcheck(func, op_args)


@pytest.mark.parametrize("op", OPS)
def test_compiled_sampling_forward_uses_it(op):
    fn, args = example(op)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch._dynamo.reset()
    model = torch.compile(fn, fullgraph=True, backend=backend)
    with mk.use_backend("cpu"), torch.no_grad():
        out = model(*_requiring_grad(args))
    assert len(graphs) == 1 and f"{op}_inference" in graphs[0]
    with mk.use_backend("cpu"):
        training = fn(*_requiring_grad(args))
    _equal(out, tuple(t.detach() for t in training) if isinstance(training, tuple) else training.detach())
