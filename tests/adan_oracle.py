"""An independent Adan oracle for the tests: the published update rule of sail-sg/Adan (adan.py,
betas = one minus the paper's, bias correction, eps outside the square root), written out per
parameter as plain float64 tensor formulas. It does not call mdt or mdt_kernels.

Stored values are rounded to their storage dtype after each step, as any implementation that keeps
parameters and state in those dtypes must; `truncate_bf16` emulates Triton's interpreter, which
converts fp32 to bf16 by truncation instead of round-to-nearest-even.
"""

from __future__ import annotations

import math

import torch


def _round(x: torch.Tensor, dtype: torch.dtype, truncate_bf16: bool) -> torch.Tensor:
    if dtype == torch.bfloat16 and truncate_bf16:
        bits = x.float().view(torch.int32) & -65536  # keep sign, exponent and the top 7 mantissa bits
        return bits.view(torch.float32).double()
    return x.to(dtype).double()


class AdanOracle:
    """Float64 Adan over a list of parameters (given by their initial values)."""

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, max_grad_norm=0.0,
                 no_prox=False, state_dtypes=None, truncate_bf16=False):
        self.dtypes = [p.dtype for p in params]
        self.state_dtypes = state_dtypes or [torch.promote_types(d, torch.float32) for d in self.dtypes]
        self.p = [p.detach().double().clone() for p in params]
        self.m = [torch.zeros_like(p) for p in self.p]
        self.n = [torch.zeros_like(p) for p in self.p]
        self.v = [torch.zeros_like(p) for p in self.p]
        self.neg_prev = [None] * len(self.p)  # -previous clipped gradient, as stored
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.max_grad_norm, self.no_prox, self.truncate = max_grad_norm, no_prox, truncate_bf16
        self.t = 0

    def clip_coef(self, grads) -> float:
        """min(1, max_norm / (||all grads||_2 + eps)), or 1 without clipping."""
        if self.max_grad_norm <= 0:
            return 1.0
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
        return min(1.0, self.max_grad_norm / (norm + self.eps))

    def restart(self) -> None:
        for s in (self.m, self.n, self.v):
            for x in s:
                x.zero_()
        self.t = 0

    def step(self, grads, coef: float | None = None) -> None:
        """grads: one tensor per parameter, or None for a parameter without a gradient (skipped)."""
        self.t += 1
        t, (b1, b2, b3), lr, eps, wd = self.t, self.betas, self.lr, self.eps, self.wd
        coef = self.clip_coef(grads) if coef is None else coef
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            g = coef * grad.double()
            if t == 1 or self.neg_prev[i] is None:
                d = torch.zeros_like(g)  # first step: the previous gradient is taken to be g itself
            else:
                d = g + self.neg_prev[i]
            m = b1 * self.m[i] + (1 - b1) * g
            v = b2 * self.v[i] + (1 - b2) * d
            n = b3 * self.n[i] + (1 - b3) * (g + b2 * d) ** 2
            denom = n.sqrt() / math.sqrt(1 - b3**t) + eps
            update = lr / (1 - b1**t) * m / denom + lr * b2 / (1 - b2**t) * v / denom
            if self.no_prox:
                p = self.p[i] * (1 - lr * wd) - update
            else:
                p = (self.p[i] - update) / (1 + lr * wd)
            sd, tr = self.state_dtypes[i], self.truncate
            self.p[i] = _round(p, self.dtypes[i], tr)
            self.m[i], self.n[i], self.v[i] = _round(m, sd, tr), _round(n, sd, tr), _round(v, sd, tr)
            self.neg_prev[i] = _round(-g, sd, tr)
