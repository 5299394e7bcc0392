"""gated_residual rows: the baseline is eager PyTorch as DiT/MDT blocks write it, x + gate.unsqueeze(1) * y,
with gate a strided view of adaLN_modulation(c).chunk(6, dim=1)."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.gated_residual import gated_residual_ref


def dit_baseline(x, gate, y):
    return x + gate[:, None] * y


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        x = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
        y = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)  # attention or MLP output
        mod = torch.randn(B, 6 * D, device=device, dtype=dtype, requires_grad=True)
        gate = mod.chunk(6, dim=1)[2]
        g = torch.randn(B, N, D, device=device, dtype=dtype)
        tok, vec = B * N * D * x.element_size(), B * D * x.element_size()
        # Minimal bytes. fwd: read x, y, gate; write out. bwd: read dout, y, gate; write dy, dgate
        # (dx is dout itself: no bytes).
        nbytes = {"fwd": 3 * tok + vec, "bwd": 3 * tok + 2 * vec}
        nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
        label = f"{shape} B={B} N={N} D={D}"
        for mode in modes:
            providers = op_providers(
                mk.gated_residual, gated_residual_ref, dit_baseline, (x, gate, y), (x, gate, y), g, mode, device
            )
            out.append(Case("gated_residual", label, mode, nbytes[mode], providers))
    return out
