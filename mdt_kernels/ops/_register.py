"""Fake kernels and autograd for an op's two registered forms: the C++/CUDA op ``mdt_kernels::<name>``
(defined in csrc/registration.cpp, present when the extension is built) and its Triton twin
``mdt_kernels::<name>_triton``. Each form differentiates through its own backward op
(``<name>_backward`` / ``<name>_backward_triton``), so gradients run on the same backend as the forward."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import _dispatch


def register_op(name: str, *, fake_forward: Callable, fake_backward: Callable, setup_context: Callable,
                backward: Callable, triton: bool = True) -> None:
    """backward(backward_op, ctx, *grads) returns the input gradients, calling backward_op for the math.

    triton=False: the op has no Triton twin (only the C++ form is registered)."""
    forms = [("_triton", "_backward_triton")] if triton else []
    forms += [("", "_backward")] if _dispatch._EXT_ERROR is None else []
    for fwd_suffix, bwd_suffix in forms:
        bwd_name = f"{name}{bwd_suffix}"

        def backward_op(*args, _bwd=bwd_name):
            return getattr(torch.ops.mdt_kernels, _bwd)(*args)

        def autograd_backward(ctx, *grads, _op=backward_op):
            return backward(_op, ctx, *grads)

        torch.library.register_fake(f"mdt_kernels::{name}{fwd_suffix}", fake_forward)
        torch.library.register_fake(f"mdt_kernels::{bwd_name}", fake_backward)
        torch.library.register_autograd(f"mdt_kernels::{name}{fwd_suffix}", autograd_backward,
                                        setup_context=setup_context)
