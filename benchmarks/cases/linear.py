"""linear rows: two of an MDT block's token projections, qkv (D -> 3D) and fc2 (4D -> D). Eager is F.linear
(ATen: MKL's sgemm in fp32 on the CPU), cpu is mdt_kernels.linear on its CPU GEMM engine (oneDNN where
PyTorch has it), so the speedup is the engines' difference; there is nothing else to fuse. The GEMMs are
compute-bound: GB/s counts x, W, y read/written once and is far below the copy bandwidth by nature."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.linear import linear_ref


def gemm_inputs(B, N, din, dout, device, dtype):
    """x (B, N, din), W (dout, din) scaled to keep x W^T ~ N(0, 1), zero b (dout,) and dy (B, N, dout), all
    requiring grad but dy; and the least bytes each mode moves: fwd reads x, W and writes y; bwd reads two
    (B, N, dout) tensors (linear: dy twice; linear_gelu: dy and the saved h), x and W, writes dx and dW."""
    x = torch.randn(B, N, din, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(dout, din, device=device, dtype=dtype) * din**-0.5).requires_grad_(True)
    b = torch.zeros(dout, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(B, N, dout, device=device, dtype=dtype)
    e = x.element_size()
    xs, ws, ys = B * N * din * e, din * dout * e, B * N * dout * e
    nbytes = {"fwd": xs + ws + ys, "bwd": 2 * ys + 2 * xs + 2 * ws}
    nbytes["fwd+bwd"] = nbytes["fwd"] + nbytes["bwd"]
    return (x, w, b), g, nbytes


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        for name, din, dout in (("qkv", D, 3 * D), ("fc2", 4 * D, D)):
            inputs, g, nbytes = gemm_inputs(B, N, din, dout, device, dtype)
            label = f"{shape} {name} B={B} N={N} {din}->{dout}"
            for mode in modes:
                providers = op_providers(mk.linear, linear_ref, None, inputs, inputs, g, mode, device)
                out.append(Case("linear", label, mode, nbytes[mode], providers))
    return out
