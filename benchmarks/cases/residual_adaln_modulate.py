"""residual_adaln_modulate rows: the baseline is eager PyTorch as DiT/MDT blocks write the seam between
attention and MLP, h = x + gate_msa * attn; modulate(norm(h), shift_mlp, scale_mlp), with the (B,D)
tensors strided views of adaLN_modulation(c).chunk(6, dim=1)."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from benchmarks.cases.adaln_modulate import dit_baseline as dit_modulate
from mdt_kernels.ops.residual_adaln_modulate import residual_adaln_modulate_ref


def dit_baseline(x, gate, y, shift, scale, eps=1e-6):
    h = x + gate[:, None] * y
    return h, dit_modulate(h, shift, scale, eps)


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        x = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
        y = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
        mod = torch.randn(B, 6 * D, device=device, dtype=dtype, requires_grad=True)
        _, _, gate, shift, scale, _ = mod.chunk(6, dim=1)
        grads = (torch.randn(B, N, D, device=device, dtype=dtype), torch.randn(B, N, D, device=device, dtype=dtype))
        inputs = (x, gate, y, shift, scale)
        tok, vec = B * N * D * x.element_size(), B * D * x.element_size()
        # Minimal bytes. fwd: read x, y, gate, shift, scale; write h, out. bwd: read dh, dout, h, y, gate,
        # scale; write dx, dy, dgate, dshift, dscale (statistics recomputable from h, which bwd reads).
        nbytes = {"fwd": 4 * tok + 3 * vec, "bwd": 6 * tok + 5 * vec}
        nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
        label = f"{shape} B={B} N={N} D={D}"
        for mode in modes:
            providers = op_providers(
                mk.residual_adaln_modulate, residual_adaln_modulate_ref, dit_baseline, inputs, inputs, grads,
                mode, device,
            )
            out.append(Case("residual_adaln_modulate", label, mode, nbytes[mode], providers))
    return out
