"""The fake (meta) kernels of every registered form of every op (the C++ op, its Triton twin, their backward
ops, the inference forms) agree with the real kernels, and check their inputs as the real kernels do.

Each declared op's example calls run forward and backward on each backend that takes CPU tensors here, and
every call of a registered op they make is recorded with its real outputs. Replayed under FakeTensorMode
(as torch.compile traces) and on meta tensors, each call must give outputs of the same shapes and dtypes;
with its first floating-point tensor argument made an integer tensor, it must raise, not trace."""

import pytest
import torch
from helpers import SIM, cpu_params
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

import mdt_kernels as mk
from mdt_kernels import _registry

SIZES = [_registry.Sizes(B=2, N=9, K=5, D=8, H=2, G=3), _registry.Sizes(B=1, N=9, K=9, D=4, H=1, G=3)]
OPS = sorted(_registry.all_ops())


class Recorder(TorchDispatchMode):
    """Every call of a registered op of mdt_kernels (or of the test suite's copy of it), with its outputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace.startswith("mdt_kernels"):
            self.calls.append((func, args, kwargs or {}, out))
        return out


def recorded_calls(op: str, backend: str):
    """The registered-op calls that op's example calls make on backend, forward, backward and (cpu) inference."""
    decl = _registry.get(op)
    with Recorder() as rec, mk.use_backend(backend):
        for sizes in SIZES:
            for ex in decl.examples(sizes, torch.float32):
                args = [a.detach().requires_grad_() if i in ex.grad else a for i, a in enumerate(ex.args)]
                outs = decl.function(*args, **ex.kwargs)
                outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if isinstance(o, torch.Tensor)]
                if ex.grad:
                    torch.autograd.grad(outs, [args[i] for i in ex.grad], [torch.randn_like(o) for o in outs],
                                        allow_unused=True)
                    with torch.no_grad():
                        decl.function(*args, **ex.kwargs)
    return rec.calls


def _meta(out):
    return tree_map(lambda t: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t, out)


def _first_float_to_int(args):
    """args with the first floating-point tensor (in flattened order) cast to int32."""
    leaves, spec = tree_flatten(args)
    i = next(i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.is_floating_point())
    leaves[i] = leaves[i].int()
    return spec.unflatten(leaves)


@pytest.mark.parametrize("backend", cpu_params(("cpu", "triton", SIM)))
@pytest.mark.parametrize("op", OPS)
def test_fake_kernels_match_and_check(op, backend):
    if not mk._dispatch.has_kernel(op, backend, "cpu"):
        pytest.skip(f"{op} has no {backend} kernel")
    calls = recorded_calls(op, backend)
    assert calls, f"{op} called no registered op on {backend}"
    for func, args, kwargs, out in calls:
        detached = tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, (args, kwargs))
        with FakeTensorMode() as mode:
            fake_args, fake_kwargs = tree_map(lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t,
                                              detached)
            assert _meta(func(*fake_args, **fake_kwargs)) == _meta(out), func
            with pytest.raises((TypeError, ValueError)):
                func(*_first_float_to_int(fake_args), **fake_kwargs)
        meta_args, meta_kwargs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, detached)
        assert _meta(func(*meta_args, **meta_kwargs)) == _meta(out), func
