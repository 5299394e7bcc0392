"""linear rows: two of an MDT block's token projections, qkv (D -> 3D) and fc2 (4D -> D). Eager is F.linear
(ATen: MKL's sgemm in fp32 on the CPU), cpu is mdt_kernels.linear on its CPU GEMM engine (oneDNN where
PyTorch has it), so the speedup is the engines' difference; there is nothing else to fuse. The GEMMs are
compute-bound: GB/s counts x, W, y read/written once and is far below the copy bandwidth by nature."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.linear import linear_ref


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        for name, din, dout in (("qkv", D, 3 * D), ("fc2", 4 * D, D)):
            x = torch.randn(B, N, din, device=device, dtype=dtype, requires_grad=True)
            w = (torch.randn(dout, din, device=device, dtype=dtype) * din**-0.5).requires_grad_(True)
            b = torch.zeros(dout, device=device, dtype=dtype, requires_grad=True)
            g = torch.randn(B, N, dout, device=device, dtype=dtype)
            e = x.element_size()
            xs, ws, ys = B * N * din * e, din * dout * e, B * N * dout * e
            # fwd: read x, W; write y. bwd: read dy (twice), x, W; write dx, dW.
            nbytes = {"fwd": xs + ws + ys, "bwd": 2 * ys + 2 * xs + 2 * ws}
            nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
            label = f"{shape} {name} B={B} N={N} {din}->{dout}"
            for mode in modes:
                providers = op_providers(mk.linear, linear_ref, None, (x, w, b), (x, w, b), g, mode, device)
                out.append(Case("linear", label, mode, nbytes[mode], providers))
    return out
