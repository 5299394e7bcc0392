"""adaln_modulate rows: the baseline is eager PyTorch as DiT/MDT blocks write it, with shift/scale the
strided views of adaLN_modulation(c).chunk(6, dim=1)."""

import torch
import torch.nn.functional as F

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.adaln_modulate import adaln_modulate_ref


def dit_baseline(x, shift, scale, eps=1e-6):
    # DiT: modulate(norm(x), shift, scale) with norm = LayerNorm(D, elementwise_affine=False, eps=1e-6)
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale[:, None]) + shift[:, None]


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        x = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
        mod = torch.randn(B, 6 * D, device=device, dtype=dtype, requires_grad=True)  # adaLN_modulation(c)
        shift, scale = mod.chunk(6, dim=1)[:2]
        g = torch.randn(B, N, D, device=device, dtype=dtype)
        tok, vec = B * N * D * x.element_size(), B * D * x.element_size()
        # Minimal bytes. fwd: read x, shift, scale; write out. bwd: read dout, x, scale; write dx, dshift,
        # dscale (the row statistics can be recomputed from x, which bwd reads anyway).
        nbytes = {"fwd": 2 * tok + 2 * vec, "bwd": 3 * tok + 3 * vec}
        nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
        label = f"{shape} B={B} N={N} D={D}"
        for mode in modes:
            providers = op_providers(
                mk.adaln_modulate, adaln_modulate_ref, dit_baseline, (x, shift, scale), (x, shift, scale), g, mode,
                device,
            )
            out.append(Case("adaln_modulate", label, mode, nbytes[mode], providers))
    return out
