"""linear_gelu rows: the MLP's fc1 + GELU(tanh) at D -> 4D. Eager and the baseline are both what DiT/MDT
run (nn.Linear then nn.GELU), so the baseline column is left out. The GEMMs dominate (compute-bound);
GB/s counts x, W, y (and h) read/written once, so it is far below the copy bandwidth by nature."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.linear_gelu import linear_gelu_ref


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        x = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
        w = (torch.randn(4 * D, D, device=device, dtype=dtype) * D**-0.5).requires_grad_(True)
        b = torch.zeros(4 * D, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn(B, N, 4 * D, device=device, dtype=dtype)
        e = x.element_size()
        xs, ws, hs = B * N * D * e, 4 * D * D * e, 4 * B * N * D * e
        # fwd: read x, W; write y. bwd: read dy, x, W and the saved pre-activation; write dx, dW.
        nbytes = {"fwd": xs + ws + hs, "bwd": 2 * hs + 2 * xs + 2 * ws}
        nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
        label = f"{shape} B={B} N={N} D={D}->{4 * D}"
        for mode in modes:
            providers = op_providers(mk.linear_gelu, linear_gelu_ref, None, (x, w, b), (x, w, b), g, mode, device)
            out.append(Case("linear_gelu", label, mode, nbytes[mode], providers))
    return out
