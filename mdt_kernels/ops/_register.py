"""Fake kernels and autograd for an op's registered forms: the C++/CUDA op ``mdt_kernels::<name>`` (its schema
defined in csrc/cpu/<name>.cpp, present when the extension is built) and its Triton twin
``mdt_kernels::<name>_triton``. Each form differentiates through its own backward op (``<name>_backward`` /
``<name>_backward_triton``), so gradients run on the same backend as the forward.

``register_namespace(ns)`` gives the C++ forms the same rules in another namespace that defines the same
schemas (the test suite registers the CUDA bindings under one of its own).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import _dispatch

# One function per registered op: register(ns) installs its rules for ns::<name>.
_RULES: list[Callable[[str], None]] = []


def _for_compiled_forms(register: Callable[[str], None]) -> None:
    """Runs register(ns) for mdt_kernels when the extension is built, and later for each register_namespace."""
    _RULES.append(register)
    if _dispatch._EXT_ERROR is None:
        register("mdt_kernels")


def register_namespace(ns: str) -> None:
    """Registers every C++ form's fake kernel and autograd for the same schemas defined in namespace ``ns``."""
    for register in _RULES:
        register(ns)


def register_op(name: str, *, fake_forward: Callable, fake_backward: Callable, setup_context: Callable,
                backward: Callable, triton: bool = True) -> None:
    """backward(backward_op, ctx, *grads) returns the input gradients, calling backward_op for the math.

    triton=False: the op has no Triton twin (only the C++ form is registered)."""

    def register(ns: str, fwd_suffix: str = "", bwd_suffix: str = "_backward") -> None:
        bwd_name = f"{name}{bwd_suffix}"

        def backward_op(*args):
            return getattr(getattr(torch.ops, ns), bwd_name)(*args)

        def autograd_backward(ctx, *grads):
            return backward(backward_op, ctx, *grads)

        torch.library.register_fake(f"{ns}::{name}{fwd_suffix}", fake_forward)
        torch.library.register_fake(f"{ns}::{bwd_name}", fake_backward)
        torch.library.register_autograd(f"{ns}::{name}{fwd_suffix}", autograd_backward, setup_context=setup_context)

    if triton:
        register("mdt_kernels", "_triton", "_backward_triton")
    _for_compiled_forms(register)


def register_fake(name: str, fake: Callable) -> None:
    """The fake kernel of the C++ op ``name`` (one without a backward: it mutates, or is not differentiable)."""
    _for_compiled_forms(lambda ns: torch.library.register_fake(f"{ns}::{name}", fake))


def register_inference(name: str, fake: Callable) -> Callable | None:
    """The CPU inference form ``mdt_kernels::<name>_inference`` of an op: its forward without what only a
    backward reads (attention statistics, the GELU input, LayerNorm statistics), for sampling. Registers its
    fake kernel (torch.compile) and returns the function calling it; None without the extension."""
    if _dispatch._EXT_ERROR is not None:
        return None
    torch.library.register_fake(f"mdt_kernels::{name}_inference", fake)
    return getattr(torch.ops.mdt_kernels, f"{name}_inference")
