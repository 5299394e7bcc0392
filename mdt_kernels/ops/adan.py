"""adan_step(...): one Adan optimizer step over many parameters at once, in place.

The update is sail-sg/Adan's as coded (betas are one minus the paper's; bias correction; eps outside
the square root), on the clipped gradient g = clip_coef * grad. With d = g - g_prev (0 on a first step):

    m = b1 m + (1-b1) g        v = b2 v + (1-b2) d        n = b3 n + (1-b3) (g + b2 d)^2
    denom = sqrt(n) / sqrt(1-b3^t) + eps
    u = lr/(1-b1^t) * m/denom + lr*b2/(1-b2^t) * v/denom
    p = (p - u) / (1 + lr wd)          (proximal form, the default)
    p = p (1 - lr wd) - u              (no_prox=True)

State names follow sail-sg: exp_avg = m, exp_avg_sq = n, exp_avg_diff = v, neg_pre_grad = -g_prev.

The reference below is the foreach sequence sail-sg runs (about 18 passes, ~184 bytes per fp32
parameter). The fused kernels read p, grad and the four states once and write p and the states once:
44 bytes per fp32 parameter, all math in fp32 (C++/CUDA: fp64 for fp64 tensors; Triton takes no fp64).
Gradients are only read, never clipped in place (sail-sg scales p.grad). A non-finite ``clip_coef``
means "skip": every backend then leaves all tensors untouched, which lets a caller skip a step on the
device without a host sync.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import torch

from .. import _checks, _dispatch
from .._registry import Example, Op, Sizes, declare
from .._triton import jit, tl
from ._register import register_fake

STATE_NAMES = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
_MUTATED = ("params", "exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")

# ---------------------------------------------------------------------------------------------------
# Reference


def adan_step_ref(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef: torch.Tensor,
                  lr: float, beta1: float, beta2: float, beta3: float, bias_correction1: float,
                  bias_correction2: float, bias_correction3_sqrt: float, eps: float, weight_decay: float,
                  no_prox: bool, first: bool) -> None:
    """sail-sg's multi-tensor (foreach) Adan step on one device. 16-bit tensors are computed in fp32
    copies that are written back at the end. Reads clip_coef on the host to honour the skip signal."""
    if not params or not bool(torch.isfinite(clip_coef).all()):
        return
    acc = [torch.promote_types(p.dtype, torch.float32) for p in params]

    def up(ts):  # the tensors themselves where already in the math dtype, else fp32 copies
        return [t if t.dtype == a else t.to(a) for t, a in zip(ts, acc, strict=True)]

    p, m, n, v, npg = up(params), up(exp_avg), up(exp_avg_sq), up(exp_avg_diff), up(neg_pre_grad)
    g = torch._foreach_mul([t.to(a) for t, a in zip(grads, acc, strict=True)], clip_coef.to(torch.float32))
    if first:  # neg_pre_grad is seeded with -g, so that d = 0
        torch._foreach_copy_(npg, torch._foreach_neg(g))

    torch._foreach_add_(npg, g)  # npg now holds d = g - g_prev
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, g, alpha=1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_add_(v, npg, alpha=1 - beta2)
    torch._foreach_mul_(npg, beta2)
    torch._foreach_add_(npg, g)  # g + b2 d
    torch._foreach_mul_(n, beta3)
    torch._foreach_addcmul_(n, npg, npg, value=1 - beta3)

    denom = torch._foreach_sqrt(n)
    torch._foreach_div_(denom, bias_correction3_sqrt)
    torch._foreach_add_(denom, eps)
    step_size = lr / bias_correction1
    step_size_diff = lr * beta2 / bias_correction2
    if no_prox:
        torch._foreach_mul_(p, 1 - lr * weight_decay)
        torch._foreach_addcdiv_(p, m, denom, value=-step_size)
        torch._foreach_addcdiv_(p, v, denom, value=-step_size_diff)
    else:
        torch._foreach_addcdiv_(p, m, denom, value=-step_size)
        torch._foreach_addcdiv_(p, v, denom, value=-step_size_diff)
        torch._foreach_div_(p, 1 + lr * weight_decay)
    torch._foreach_neg_(g)
    torch._foreach_copy_(npg, g)  # neg_pre_grad = -g for the next step

    for originals, work in ((params, p), (exp_avg, m), (exp_avg_sq, n), (exp_avg_diff, v), (neg_pre_grad, npg)):
        for t, w in zip(originals, work, strict=True):
            if w is not t:
                t.copy_(w)


# ---------------------------------------------------------------------------------------------------
# Triton kernel: one program per chunk of one tensor. The tensors' addresses come from an int64 table
# (p, g, m, n, v, neg_pre_grad per row), so one launch covers every tensor of a dtype group.


@jit
def _adan_step_kernel(addr_ptr, numel_ptr, work_ptr, coef_ptr, beta1, beta2, beta3, omb1, omb2, omb3, step_size,
                      step_size_diff, bc3_sqrt, eps, decay, P_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
                      FIRST: tl.constexpr, NO_PROX: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr,
                      BLOCK: tl.constexpr):
    w = tl.program_id(0)
    t = tl.load(work_ptr + 2 * w)
    start = tl.multiple_of(tl.load(work_ptr + 2 * w + 1), CHUNK)
    coef = tl.load(coef_ptr).to(tl.float32)
    if tl.abs(coef) <= 3.4028234663852886e38:  # finite (NaN fails every comparison); else skip the step
        end = tl.minimum(start + CHUNK, tl.load(numel_ptr + t))
        row = addr_ptr + 6 * t
        p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(P_DTYPE))
        m_ptr = tl.load(row + 2).to(tl.pointer_type(S_DTYPE))
        n_ptr = tl.load(row + 3).to(tl.pointer_type(S_DTYPE))
        v_ptr = tl.load(row + 4).to(tl.pointer_type(S_DTYPE))
        q_ptr = tl.load(row + 5).to(tl.pointer_type(S_DTYPE))
        if ALIGNED:  # every address 16-byte aligned (checked by the launcher): lets the compiler vectorise
            p_ptr, g_ptr = tl.multiple_of(p_ptr, 16), tl.multiple_of(g_ptr, 16)
            m_ptr, n_ptr = tl.multiple_of(m_ptr, 16), tl.multiple_of(n_ptr, 16)
            v_ptr, q_ptr = tl.multiple_of(v_ptr, 16), tl.multiple_of(q_ptr, 16)
        for k in range(0, tl.cdiv(end - start, BLOCK)):
            i = start + k * BLOCK + tl.arange(0, BLOCK)
            mask = i < end
            g = coef * tl.load(g_ptr + i, mask=mask).to(tl.float32)
            if FIRST:
                d = tl.zeros_like(g)
            else:
                d = g + tl.load(q_ptr + i, mask=mask).to(tl.float32)
            m = beta1 * tl.load(m_ptr + i, mask=mask).to(tl.float32) + omb1 * g
            v = beta2 * tl.load(v_ptr + i, mask=mask).to(tl.float32) + omb2 * d
            u = g + beta2 * d
            n = beta3 * tl.load(n_ptr + i, mask=mask).to(tl.float32) + omb3 * u * u
            denom = tl.div_rn(tl.sqrt_rn(n), bc3_sqrt) + eps
            update = tl.div_rn(step_size * m + step_size_diff * v, denom)
            p = tl.load(p_ptr + i, mask=mask).to(tl.float32)
            if NO_PROX:
                p = p * decay - update
            else:
                p = tl.div_rn(p - update, decay)
            tl.store(p_ptr + i, p.to(P_DTYPE), mask=mask)
            tl.store(m_ptr + i, m.to(S_DTYPE), mask=mask)
            tl.store(n_ptr + i, n.to(S_DTYPE), mask=mask)
            tl.store(v_ptr + i, v.to(S_DTYPE), mask=mask)
            tl.store(q_ptr + i, (-g).to(S_DTYPE), mask=mask)


_TL_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# Address/work tables by (device, addresses, sizes): a training loop passes the same tensors every step
# (gradients too, unless zero_grad frees them), so building and copying the tables happens once, and a
# CUDA-graph capture of step() finds them ready (no host-to-device copy inside the capture).
_TABLES: OrderedDict = OrderedDict()
_TABLES_MAX = 16


def _launch_shape(device: torch.device) -> tuple[int, int]:
    """(BLOCK, CHUNK): interpreted Triton (tests) uses small chunks so that tails and multi-chunk
    tensors appear at tiny sizes; GPUs get 16K-element chunks."""
    return (1024, 16384) if device.type == "cuda" else (128, 512)


def _tables(lists, device: torch.device, chunk: int):
    """(addresses (T,6), numels (T,), work (C,2) = (tensor, first element) per program, all 16-byte
    aligned?) for the non-empty tensors of `lists`, on `device`."""
    numels = [t.numel() for t in lists[0]]
    keep = [i for i, k in enumerate(numels) if k > 0]
    addrs = tuple(lst[i].data_ptr() for i in keep for lst in lists)
    key = (device, chunk, addrs, tuple(numels[i] for i in keep))
    hit = _TABLES.get(key)
    if hit is not None:
        _TABLES.move_to_end(key)
        return hit
    sizes = torch.tensor([numels[i] for i in keep], dtype=torch.int64)
    counts = (sizes + chunk - 1) // chunk
    tensor_of = torch.repeat_interleave(torch.arange(len(keep)), counts)
    first_chunk = torch.cumsum(counts, 0) - counts
    start = (torch.arange(int(counts.sum())) - first_chunk[tensor_of]) * chunk
    host = (torch.tensor(addrs, dtype=torch.int64).view(-1, 6), sizes, torch.stack([tensor_of, start], 1))
    if device.type == "cuda":  # pinned + non_blocking: no host sync (the caching host allocator guards reuse)
        host = tuple(h.pin_memory().to(device, non_blocking=True) for h in host)
    entry = (*host, all(a % 16 == 0 for a in addrs))
    _TABLES[key] = entry
    if len(_TABLES) > _TABLES_MAX:
        _TABLES.popitem(last=False)
    return entry


@torch.library.custom_op("mdt_kernels::adan_step_triton", mutates_args=_MUTATED)
def adan_step_triton(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                     exp_avg_sq: list[torch.Tensor], exp_avg_diff: list[torch.Tensor],
                     neg_pre_grad: list[torch.Tensor], clip_coef: torch.Tensor, lr: float, beta1: float,
                     beta2: float, beta3: float, bias_correction1: float, bias_correction2: float,
                     bias_correction3_sqrt: float, eps: float, weight_decay: float, no_prox: bool,
                     first: bool) -> None:
    if not params or all(p.numel() == 0 for p in params):
        return
    device = params[0].device
    block, chunk = _launch_shape(device)
    lists = (params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad)
    addr, numel, work, aligned = _tables(lists, device, chunk)
    p_dtype, s_dtype = params[0].dtype, exp_avg[0].dtype
    if torch.float64 in (p_dtype, s_dtype):  # Triton passes scalars as fp32; its IEEE div/sqrt are fp32-only
        raise TypeError("the triton backend of adan_step takes float32/float16/bfloat16 tensors, not float64; "
                        "use the reference, cpu or cuda backend")
    decay = 1 - lr * weight_decay if no_prox else 1 + lr * weight_decay
    _adan_step_kernel[(work.shape[0],)](
        addr, numel, work, clip_coef, beta1, beta2, beta3, 1 - beta1, 1 - beta2, 1 - beta3, lr / bias_correction1,
        lr * beta2 / bias_correction2, bias_correction3_sqrt, eps, decay,
        P_DTYPE=getattr(tl, _TL_DTYPES[p_dtype]), S_DTYPE=getattr(tl, _TL_DTYPES[s_dtype]),
        FIRST=first, NO_PROX=no_prox,
        ALIGNED=aligned, CHUNK=chunk, BLOCK=block,
    )


# ---------------------------------------------------------------------------------------------------
# Checks and registration: the ops only mutate their inputs, so the fake (meta) kernels only check them.


def check_tensors(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef=None) -> None:
    """Per parameter i: params[i] a floating-point tensor, grads[i] of its dtype, shape and device (not
    sparse), its four states of one dtype (float32 or the parameter's), its shape and device. With clip_coef
    (a registered op's call, which takes one dtype group): each list of one dtype and clip_coef a one-element
    float32 tensor. The public function's arguments and the fake kernel's."""
    states = (exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad)
    n = len(params)
    for name, lst in zip(("grads",) + STATE_NAMES, (grads,) + states, strict=True):
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} tensors but params has {n}")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or not p.dtype.is_floating_point:
            raise TypeError(f"params[{i}] must be a floating-point tensor, got {getattr(p, 'dtype', type(p))}")
        g = grads[i]
        if g.is_sparse:
            raise RuntimeError(f"grads[{i}] is sparse; Adan does not support sparse gradients")
        if g.dtype != p.dtype or g.shape != p.shape or g.device != p.device:
            raise ValueError(f"grads[{i}] is {g.dtype} {tuple(g.shape)} on {g.device}; params[{i}] is "
                             f"{p.dtype} {tuple(p.shape)} on {p.device}")
        s0 = states[0][i]
        for name, lst in zip(STATE_NAMES, states, strict=True):
            s = lst[i]
            if s.dtype != s0.dtype or s.shape != p.shape or s.device != p.device:
                raise ValueError(f"{name}[{i}] is {s.dtype} {tuple(s.shape)} on {s.device}; params[{i}] is "
                                 f"{tuple(p.shape)} on {p.device} and exp_avg[{i}] is {s0.dtype}")
        if s0.dtype not in (torch.float32, p.dtype):
            raise TypeError(f"state of params[{i}] is {s0.dtype}; it must be float32 or the parameter's {p.dtype}")
    if clip_coef is None:
        return
    for name, lst in zip(("params",) + STATE_NAMES, (params,) + states, strict=True):
        for i, t in enumerate(lst):
            if t.dtype != lst[0].dtype:
                raise TypeError(f"{name}[{i}] is {t.dtype} but {name}[0] is {lst[0].dtype}; one call takes one dtype "
                                "per list")
    if clip_coef.numel() != 1 or clip_coef.dtype != torch.float32:
        raise ValueError(f"clip_coef must be a one-element float32 tensor, got {clip_coef.dtype} of shape "
                         f"{tuple(clip_coef.shape)}")


def _fake(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef, *scalars) -> None:
    check_tensors(params, grads, exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad, clip_coef)


torch.library.register_fake("mdt_kernels::adan_step_triton", _fake)
register_fake("adan_step_", _fake)


def _fake_norm(tensors):
    for i, t in enumerate(tensors):
        _checks.check_float(f"tensors[{i}]", t)
    return torch.empty((), dtype=torch.float32, device=tensors[0].device if tensors else "cpu")


register_fake("multi_tensor_l2_norm", _fake_norm)


def _compiled(ops, *args) -> None:
    ops.adan_step_(*args)


# ---------------------------------------------------------------------------------------------------
# Public function


def global_norm(tensors: list[torch.Tensor], backend: str | None = None) -> torch.Tensor:
    """The L2 norm over all ``tensors`` (one device, at least one tensor) as a 0-d float32 tensor,
    without a host sync: what Adan clips with. On the cpu backend one parallel pass of the C++ kernel
    ``multi_tensor_l2_norm`` (torch._foreach_norm runs a reduction per tensor there); elsewhere
    torch._foreach_norm, which on CUDA is already one multi-tensor kernel. ``backend`` None: the
    dispatcher's choice for adan_step."""
    name = backend or _dispatch.resolve("adan_step", tensors[0].device)
    if name == "cpu":
        return torch.ops.mdt_kernels.multi_tensor_l2_norm(tensors)
    f64 = [t for t in tensors if t.dtype == torch.float64]  # a float32 norm of float64 would narrow
    rest = [t for t in tensors if t.dtype != torch.float64]
    norms = list(torch._foreach_norm(rest, 2, dtype=torch.float32)) if rest else []
    norms += [n.float() for n in torch._foreach_norm(f64, 2)] if f64 else []
    return torch.linalg.vector_norm(torch.stack(norms))


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: a permutation of a contiguous layout (flat pointers cover it)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_order(t: torch.Tensor, p: torch.Tensor) -> bool:
    """Same element order in flat memory: equal strides on every dimension of size > 1 (a size-1
    dimension's stride addresses nothing; gradients may differ from their parameters there)."""
    return all(st == sp for st, sp, n in zip(t.stride(), p.stride(), p.shape, strict=True) if n != 1)


def adan_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
              exp_avg_sq: list[torch.Tensor], exp_avg_diff: list[torch.Tensor], neg_pre_grad: list[torch.Tensor], *,
              lr: float, step: int, betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
              weight_decay: float = 0.0, no_prox: bool = False, clip_coef: torch.Tensor | None = None,
              first: bool | None = None, backend: str | None = None, check: bool = True) -> None:
    """One Adan step on every parameter, in place (see the module docstring for the update).

    Args:
        params: parameters (float32/float16/bfloat16, float64 except on triton; any mix of shapes,
            dtypes and devices).
        grads: their gradients (same dtype, shape and device as each parameter; read only).
        exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad: the state per parameter (sail-sg names), float32
            or the parameter's dtype, the four of one parameter sharing one dtype.
        lr, betas, eps, weight_decay, no_prox: Adan hyper-parameters (betas = (b1, b2, b3), sail-sg's).
        step: the step number t >= 1 for the bias corrections 1 - b^t.
        clip_coef: 0-d float32 tensor multiplying every gradient (global-norm clipping), read on the
            device; None means 1. Non-finite means: change nothing (the on-device skip).
        first: treat g_prev as g (d = 0), ignoring neg_pre_grad's content; default ``step == 1``.
        backend: force a backend for this call; default: the dispatcher's choice per device.
        check: validate every tensor's dtype, shape and device in Python first. A caller that guarantees
            them (mdt.optim.Adan: autograd checks .grad, the optimizer makes the state) may pass False
            to save ~3 us per parameter; the C++ ops still check on their own.
    Runs under torch.no_grad(): parameters may be leaves that require grad.
    """
    states = (exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad)
    if check:
        check_tensors(params, grads, *states)
    with torch.no_grad():  # an optimizer step: parameters are leaves that require grad
        _run(params, grads, states, lr, step, betas, eps, weight_decay, no_prox, clip_coef, first, backend)


def _run(params, grads, states, lr, step, betas, eps, weight_decay, no_prox, clip_coef, first, backend) -> None:
    exp_avg = states[0]
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    beta1, beta2, beta3 = betas
    first = step == 1 if first is None else bool(first)
    scalars = (lr, beta1, beta2, beta3, 1 - beta1**step, 1 - beta2**step, math.sqrt(1 - beta3**step), eps,
               weight_decay, bool(no_prox), first)

    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype, exp_avg[i].dtype), []).append(i)
    for (device, _, _), idx in groups.items():
        if backend is None:
            name = _dispatch.resolve("adan_step", device)
        else:
            why = _dispatch.unavailable_reason(backend, device)
            if why is not None:
                raise _dispatch.BackendError(f"mdt_kernels.adan_step: backend {backend!r} cannot run: {why}")
            name = backend
        if clip_coef is None:
            coef = torch.ones((), dtype=torch.float32, device=device)
        else:
            coef = clip_coef.to(device=device, dtype=torch.float32, non_blocking=True).reshape(())
        lists = [[lst[i] for i in idx] for lst in (params, grads) + states]
        write_back = []
        if name != "reference":  # kernels take flat memory: every tensor must share the param's dense layout
            for j in range(len(idx)):
                p = lists[0][j]
                if all(lst[j].is_contiguous() for lst in lists):
                    continue
                if not (_is_dense(p) and all(_same_order(lst[j], p) for lst in lists[1:])):
                    for k, lst in enumerate(lists):
                        orig, lst[j] = lst[j], lst[j].contiguous()
                        if k != 1 and lst[j] is not orig:  # grads are only read
                            write_back.append((orig, lst[j]))
        IMPLS[name](*lists, coef, *scalars)
        for orig, work in write_back:
            orig.copy_(work)


# ---------------------------------------------------------------------------------------------------
# Declaration: the op as the dispatcher, the generic tests and the Triton AOT sweep see it (mdt_kernels._registry)


def _examples(s: Sizes, dtype) -> list[Example]:
    """One 1000-element parameter of ``dtype`` with float32 state, and with state of its own dtype (16-bit);
    first and later steps, both weight-decay forms; first steps of the proximal form also on a misaligned
    view (the flat kernels' unaligned path)."""
    if dtype == torch.float64:
        return []
    calls = []
    for s_dtype in dict.fromkeys((torch.float32, dtype)):
        for first in (True, False):
            for no_prox in (False, True):
                for aligned in (True, False) if (first, no_prox) == (True, False) else (True,):
                    param = torch.randn(1001).to(dtype)[int(not aligned):][:1000]
                    lists = [[param], [torch.randn(1000).to(dtype)]] + [[torch.rand(1000).to(s_dtype)]
                                                                         for _ in STATE_NAMES]
                    calls.append(Example(tuple(lists), dict(lr=1e-3, step=1 if first else 2, no_prox=no_prox)))
    return calls


IMPLS = {
    "reference": adan_step_ref,
    "cpu": functools.partial(_compiled, torch.ops.mdt_kernels),
    "cuda": functools.partial(_compiled, torch.ops.mdt_kernels),
    "triton": adan_step_triton,
}
declare(Op("adan_step", adan_step, compiled=_compiled, examples=_examples, impls=IMPLS))
