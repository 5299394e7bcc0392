"""Adan (Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models"),
with the update, options and state layout of sail-sg/Adan, which MDT trains with.

Two paths compute the same step (see mdt_kernels/ops/adan.py for the formula):
  reference  sail-sg's foreach sequence, ~184 bytes of memory traffic per fp32 parameter.
  fused      one multi-tensor kernel pass (C++ on CPU, CUDA or Triton on GPU), 44 bytes per parameter.
Both read the clipping coefficient from a device tensor: step() never calls .item() except where
the non-finite policy "raise" has to decide on the host (below).

Differences from sail-sg, all deliberate:
  * p.grad is left as it is (sail-sg multiplies it by the clip coefficient in place).
  * State is kept in float32 for 16-bit parameters by default (sail-sg: the parameter's dtype);
    ``state_dtype=None`` restores sail-sg's choice. Loading a state dict converts either way.
  * Non-finite gradients follow ``nonfinite`` (sail-sg lets NaN/inf flow into parameters and state):
      "raise" (default): the finiteness test rides on the gradient-norm reduction that clipping needs
          anyway (it is computed for the test when max_grad_norm is 0: one extra read of the
          gradients, 4 bytes per fp32 parameter). Reading its one-element result is the only host
          sync of step(). It raises FloatingPointError before any parameter, state or step counter
          changes.
      "skip": no host sync at all. The clip coefficient becomes NaN on the device when the norm is not
          finite, and every kernel then returns without writing. Because the decision never reaches
          the host, the group's ``step`` counter (bias correction) still advances on a skipped step;
          ``skipped_steps()`` reads the on-device count of skipped steps when you want it. A caller that
          judges a step bad itself (a non-finite loss) sets ``opt.found_inf`` (a 0-d tensor, nonzero: skip)
          before step(), as torch's fused optimizers read it from GradScaler.
  * ``last_grad_norm`` holds the global gradient norm of the last step (before clipping), on the device.
  * The clipping eps is ``defaults["eps"]`` (sail-sg uses the eps of the last parameter group).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

import mdt_kernels as mk
from mdt_kernels.ops.adan import STATE_NAMES, adan_step, global_norm

NONFINITE_POLICIES = ("raise", "skip")


class Adan(torch.optim.Optimizer):
    """Adan with sail-sg's update rule, global-norm clipping and state names.

    Args:
        params: parameters or parameter groups.
        lr: learning rate. betas: (b1, b2, b3) as in sail-sg (one minus the paper's betas).
        eps: added to the denominator (outside the square root) and to the norm when clipping.
        weight_decay: decoupled weight decay; proximal (divide by 1 + lr wd) unless no_prox.
        max_grad_norm: clip the global L2 norm of all gradients of the optimizer to this; 0 disables.
        no_prox: AdamW-style decay p (1 - lr wd) instead of the proximal form.
        fused: True: always the fused kernels (the dispatcher picks cpu, cuda or triton, and warns if it
            has to fall back to the reference); False: the foreach reference; None: fused wherever a
            fused backend exists for the parameters' device.
        state_dtype: dtype of the four state tensors, promoted with the parameter's (float32 default:
            fp32 state for 16-bit parameters); None keeps state in the parameter's dtype.
        nonfinite: "raise" or "skip"; what a step with inf/NaN gradients does (module docstring).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float = 0.0, no_prox: bool = False,
                 fused: bool | None = None, *, state_dtype: torch.dtype | None = torch.float32,
                 nonfinite: str = "raise"):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"invalid epsilon: {eps}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be three numbers in [0, 1), got {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if not max_grad_norm >= 0.0:
            raise ValueError(f"invalid max_grad_norm: {max_grad_norm}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if state_dtype is not None and not state_dtype.is_floating_point:
            raise TypeError(f"state_dtype must be a floating-point dtype or None, got {state_dtype}")
        # 'foreach' is not used here; it is kept so that sail-sg's Adan can load these groups.
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        no_prox=no_prox, foreach=True, fused=fused)
        super().__init__(params, defaults)
        self.state_dtype = state_dtype
        self.nonfinite = nonfinite
        self._skipped: torch.Tensor | None = None

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved by sail-sg's Adan (or older versions) lack some keys
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # -----------------------------------------------------------------------------------------------
    # State

    def _state_dtype_for(self, p: torch.Tensor) -> torch.dtype:
        return p.dtype if self.state_dtype is None else torch.promote_types(p.dtype, self.state_dtype)

    def restart_opt(self) -> None:
        """Zeroes m, n and v and restarts the step count, so that the next step re-seeds neg_pre_grad
        (sail-sg's restart; the paper restarts after warm-up and then periodically). In place: tensor
        addresses stay, so a captured CUDA graph of step() stays valid."""
        for group in self.param_groups:
            group["step"] = 0
            for p in group["params"]:
                state = self.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                    if key in state:
                        state[key].zero_()

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads a state dict of this class or of sail-sg's Adan. Hyper-parameters and ``step`` come
        from the state dict; the implementation choice (``fused``) stays as constructed. State tensors
        are converted to this optimizer's state dtype from the saved values (torch's loader would round
        fp32 state to a 16-bit parameter's dtype first)."""
        fused = [g["fused"] for g in self.param_groups]
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params, strict=False):  # a length mismatch is reported by torch below
            for key in STATE_NAMES:
                value = saved.get(i, {}).get(key)
                if value is not None and value.shape != p.shape:  # step() relies on it (flat-memory kernels)
                    raise ValueError(f"state {key!r} of saved parameter {i} has shape {tuple(value.shape)}, "
                                     f"but the parameter has shape {tuple(p.shape)}")
        super().load_state_dict(state_dict)
        for group, f in zip(self.param_groups, fused, strict=True):
            group["fused"] = f
        for i, p in zip(ids, params, strict=True):
            for key in STATE_NAMES:
                if key in saved.get(i, {}):
                    self.state[p][key] = saved[i][key].to(device=p.device, dtype=self._state_dtype_for(p), copy=True)

    def skipped_steps(self) -> int:
        """Number of steps skipped for non-finite gradients under ``nonfinite="skip"`` (reads the
        on-device counter: a host sync, at the caller's choice of time)."""
        return 0 if self._skipped is None else int(self._skipped)

    # -----------------------------------------------------------------------------------------------
    # Step

    @staticmethod
    def _backend(fused: bool | None, device: torch.device) -> str | None:
        """The adan_step backend of a group: None (the dispatcher's fused choice) or "reference"."""
        return None if fused or (fused is None and mk.runs_fused("adan_step", device)) else "reference"

    def _clip_coef(self, grads: list[torch.Tensor], where: list[tuple[int, int]]) -> torch.Tensor:
        """The 0-d float32 clip coefficient on the first gradient's device: min(1, max_norm / (norm +
        eps)), or 1 without clipping; NaN (skip) or an exception (raise) when the norm is not finite."""
        device = grads[0].device
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        fused = self.param_groups[0]["fused"]  # the norm's implementation follows the (first group's) path
        partial = [global_norm(gs, self._backend(fused, dev)).to(device) for dev, gs in by_device.items()]
        norm = partial[0] if len(partial) == 1 else torch.linalg.vector_norm(torch.stack(partial))
        finite = torch.isfinite(norm)
        self.last_grad_norm = norm  # for a caller's logging: the global norm before clipping, on the device
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and self.nonfinite == "skip":  # the caller found the step bad itself (its loss)
            finite = finite & (found_inf.to(device) == 0)
        if self.nonfinite == "raise" and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("Adan(nonfinite='raise') reads one flag on the host per step, which a CUDA graph "
                               "capture cannot do; capture with Adan(..., nonfinite='skip')")
        if self.nonfinite == "raise" and not bool(finite):  # the one host sync of this policy
            self._raise_nonfinite(grads, where)
        max_norm = self.defaults["max_grad_norm"]
        if max_norm > 0:
            coef = (max_norm / (norm + self.defaults["eps"])).clamp_(max=1.0)
        else:
            coef = torch.ones((), dtype=torch.float32, device=device)
        if self.nonfinite == "skip":
            coef = torch.where(finite, coef, torch.full_like(coef, float("nan")))
            if self._skipped is None:
                self._skipped = torch.zeros((), dtype=torch.int64, device=device)
            self._skipped.add_(~finite)
        return coef

    @staticmethod
    def _raise_nonfinite(grads: list[torch.Tensor], where: list[tuple[int, int]]) -> None:
        bad = [i for i, g in enumerate(grads) if not bool(torch.isfinite(g).all())]
        if bad:
            group, index = where[bad[0]]
            what = (f"{len(bad)} of {len(grads)} gradients hold inf or NaN (the first: parameter {index} of group "
                    f"{group}, shape {tuple(grads[bad[0]].shape)})")
        else:
            what = "the global gradient norm overflows float32"
        raise FloatingPointError(f"Adan.step: {what}; no parameter or state was changed. "
                                 "Adan(..., nonfinite='skip') skips such steps on the device instead.")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One optimizer step over every parameter with a gradient (parameters without one are
        skipped and keep their state, as in sail-sg; each group's ``step`` still advances)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active, grads, where = [], [], []
        for gi, group in enumerate(self.param_groups):
            params = []
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Adan does not support sparse gradients")
                params.append(p)
                grads.append(p.grad)
                where.append((gi, pi))
            active.append(params)
        coef = self._clip_coef(grads, where) if grads else None

        for group, params in zip(self.param_groups, active, strict=True):
            group["step"] = group.get("step", 0) + 1
            if not params:
                continue
            fresh, seen = [], []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    dtype = self._state_dtype_for(p)
                    for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                        state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                if "neg_pre_grad" not in state:
                    # Zeros, not empty: a first step skipped for non-finite gradients must not leave garbage.
                    state["neg_pre_grad"] = torch.zeros_like(state["exp_avg"])
                    fresh.append(p)
                elif group["step"] == 1:
                    fresh.append(p)
                else:
                    seen.append(p)
            backend = self._backend(group["fused"], params[0].device)
            for first, ps in ((True, fresh), (False, seen)):
                if not ps:
                    continue
                states = [[self.state[p][k] for p in ps] for k in STATE_NAMES]
                adan_step(ps, [p.grad for p in ps], *states, lr=group["lr"], betas=group["betas"],
                          eps=group["eps"], weight_decay=group["weight_decay"], step=group["step"],
                          no_prox=group["no_prox"], clip_coef=coef, first=first, backend=backend, check=False)
        return loss
