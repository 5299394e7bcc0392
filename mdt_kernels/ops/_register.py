"""Fake kernels and autograd for an op's two registered forms: the C++/CUDA op ``mdt_kernels::<name>``
(defined in csrc/registration.cpp, present when the extension is built; with the test-only cuda_sim backend
also ``mdt_kernels_sim::<name>``, the CUDA bindings on the host execution layer) and its Triton twin
``mdt_kernels::<name>_triton``. Each form differentiates through its own backward op
(``<name>_backward`` / ``<name>_backward_triton``), so gradients run on the same backend as the forward."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .. import _checks, _dispatch


def compiled_namespaces() -> list[str]:
    """The namespaces whose C++ ops are loaded: mdt_kernels (mdt_kernels._C) and mdt_kernels_sim (the
    cuda_sim test backend, when MDT_KERNELS_SIM has loaded it)."""
    return (["mdt_kernels"] if _dispatch._EXT_ERROR is None else []) + (
        ["mdt_kernels_sim"] if _dispatch._SIM_ERROR is None else [])


def compiled_op(ns: str, name: str) -> Callable:
    """A function calling the C++ op ``ns::name`` (looked up at call time)."""
    def call(*args):
        return getattr(getattr(torch.ops, ns), name)(*args)

    return call


def sim_twin(compiled: Callable) -> Callable:
    """The cuda_sim implementation of an op whose ``compiled(*args, ops=torch.ops.mdt_kernels)`` calls its C++ op."""
    return functools.partial(compiled, ops=torch.ops.mdt_kernels_sim)


def register_op(name: str, *, fake_forward: Callable, fake_backward: Callable, setup_context: Callable,
                backward: Callable, triton: bool = True) -> None:
    """backward(backward_op, ctx, *grads) returns the input gradients, calling backward_op for the math.

    triton=False: the op has no Triton twin (only the C++ form is registered)."""
    forms = [("mdt_kernels", "_triton", "_backward_triton")] if triton else []
    forms += [(ns, "", "_backward") for ns in compiled_namespaces()]
    for ns, fwd_suffix, bwd_suffix in forms:
        bwd_name = f"{name}{bwd_suffix}"

        def backward_op(*args, _bwd=bwd_name, _ns=ns):
            return getattr(getattr(torch.ops, _ns), _bwd)(*args)

        def autograd_backward(ctx, *grads, _op=backward_op):
            return backward(_op, ctx, *grads)

        torch.library.register_fake(f"{ns}::{name}{fwd_suffix}", fake_forward)
        torch.library.register_fake(f"{ns}::{bwd_name}", fake_backward)
        torch.library.register_autograd(f"{ns}::{name}{fwd_suffix}", autograd_backward,
                                        setup_context=setup_context)


def register_inference(name: str, fake: Callable, cpu_form: Callable) -> Callable:
    """The CPU inference form ``mdt_kernels::<name>_inference`` of an op: its forward without what only a
    backward reads (attention probabilities, the GELU input, LayerNorm statistics), for sampling.

    Registers its fake kernel (torch.compile) and returns the CPU implementation to dispatch to: it
    calls ``cpu_form(*args)`` (the training form) when autograd records the call, else the inference form.
    Without the extension it returns cpu_form unchanged (the cpu backend is unavailable anyway)."""
    if _dispatch._EXT_ERROR is not None:
        return cpu_form
    torch.library.register_fake(f"mdt_kernels::{name}_inference", fake)
    inference = getattr(torch.ops.mdt_kernels, f"{name}_inference")

    def run(*args):
        return cpu_form(*args) if grad_needed(*args) else inference(*args)

    return run


def grad_needed(*args) -> bool:
    """Whether autograd records a call with these arguments: grad mode on (not torch.no_grad() or
    inference_mode) and a tensor argument that requires grad."""
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def expect(name: str, t: torch.Tensor, shape: tuple, layout: str, dtype: torch.dtype | None = None) -> None:
    """In a fake kernel: t has `shape` (ints or symbolic sizes; None leaves a dim free, described as `layout`,
    e.g. "(B, D)") and, when given, `dtype`, as the real kernel requires. torch._check raises a ValueError /
    TypeError under FakeTensorMode or torch.compile tracing, as the real kernels raise on real tensors."""
    torch._check_value(t.dim() == len(shape), lambda: f"{name} must be {len(shape)}-D {layout}, got shape "
                                                     f"{tuple(t.shape)}")
    for size, want in zip(t.shape, shape, strict=True):
        if want is not None:
            torch._check_value(size == want, lambda: f"{name} must have shape {layout}, got {tuple(t.shape)}")
    if dtype is not None:
        torch._check_type(t.dtype == dtype, lambda: f"{name} has dtype {t.dtype}, expected {dtype}")


def expect_float(name: str, t: torch.Tensor) -> None:
    """In a fake kernel: t is float32, float16, bfloat16 or float64."""
    torch._check_type(t.dtype in _checks.FLOAT_DTYPES,
                      lambda: f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def expect_ids(name: str, ids: torch.Tensor, shape: tuple) -> None:
    """In a fake kernel: an int64 (B, K) index tensor (the public functions convert int32 ids)."""
    expect(name, ids, shape, "(B, K)", torch.int64)
