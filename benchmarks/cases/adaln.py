"""Rows of the adaLN family (adaln_modulate, gated_residual, residual_adaln_modulate). The baselines are
eager PyTorch as DiT/MDT blocks write them, with gate/shift/scale the strided views of
adaLN_modulation(c).chunk(6, dim=1): modulate(norm(x), shift, scale) with norm = LayerNorm(D,
elementwise_affine=False, eps=1e-6), x + gate.unsqueeze(1) * y, and the seam between attention and MLP,
h = x + gate_msa * attn; modulate(norm(h), shift_mlp, scale_mlp)."""

import torch
import torch.nn.functional as F

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.adaln import adaln_modulate_ref, gated_residual_ref, residual_adaln_modulate_ref

OPS = ("adaln_modulate", "gated_residual", "residual_adaln_modulate")


def dit_modulate(x, shift, scale, eps=1e-6):
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale[:, None]) + shift[:, None]


def dit_gated_residual(x, gate, y):
    return x + gate[:, None] * y


def dit_residual_modulate(x, gate, y, shift, scale, eps=1e-6):
    h = dit_gated_residual(x, gate, y)
    return h, dit_modulate(h, shift, scale, eps)


# Per op: public function, reference, baseline, the chunks of adaLN_modulation(c) it takes, whether it
# takes y, its outputs, and its minimal bytes in (B,N,D) tensors and (B,D) vectors (fwd, bwd):
#   adaln_modulate  fwd: read x, shift, scale; write out. bwd: read dout, x, scale; write dx, dshift, dscale
#                   (the row statistics can be recomputed from x, which bwd reads anyway).
#   gated_residual  fwd: read x, y, gate; write out. bwd: read dout, y, gate; write dy, dgate (dx is dout
#                   itself: no bytes).
#   residual_adaln_modulate  fwd: read x, y, gate, shift, scale; write h, out. bwd: read dh, dout, h, y, gate,
#                   scale; write dx, dy, dgate, dshift, dscale (statistics recomputable from h).
VARIANTS = {
    "adaln_modulate": (mk.adaln_modulate, adaln_modulate_ref, dit_modulate, (0, 1), False, 1,
                       {"fwd": (2, 2), "bwd": (3, 3)}),
    "gated_residual": (mk.gated_residual, gated_residual_ref, dit_gated_residual, (2,), True, 1,
                       {"fwd": (3, 1), "bwd": (3, 2)}),
    "residual_adaln_modulate": (mk.residual_adaln_modulate, residual_adaln_modulate_ref, dit_residual_modulate,
                                (2, 3, 4), True, 2, {"fwd": (4, 3), "bwd": (6, 5)}),
}


def cases(device, dtype, shapes, modes, ops=OPS):
    out = []
    for op in ops:
        fn, ref, baseline, chunks, takes_y, n_out, counts = VARIANTS[op]
        for shape in shapes:
            s = SHAPES[shape]
            B, N, D = s["B"], s["N"], s["D"]
            x = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
            y = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)  # attention or MLP output
            mod = torch.randn(B, 6 * D, device=device, dtype=dtype, requires_grad=True)  # adaLN_modulation(c)
            vecs = [mod.chunk(6, dim=1)[i] for i in chunks]
            inputs = (x, vecs[0], y, *vecs[1:]) if takes_y else (x, *vecs)
            grads = tuple(torch.randn(B, N, D, device=device, dtype=dtype) for _ in range(n_out))
            tok, vec = B * N * D * x.element_size(), B * D * x.element_size()
            nbytes = {m: t * tok + v * vec for m, (t, v) in counts.items()}
            nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
            label = f"{shape} B={B} N={N} D={D}"
            for mode in modes:
                providers = op_providers(fn, ref, baseline, inputs, inputs, grads if n_out > 1 else grads[0],
                                         mode, device)
                out.append(Case(op, label, mode, nbytes[mode], providers))
    return out
