"""gather_tokens rows: MDT's keep step, torch.gather with a repeated int64 (B,K,D) index, is the baseline."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.gather_tokens import gather_tokens_ref


def mdt_baseline(x, ids):
    # sail-sg/MDT random_masking: gather with ids_keep.unsqueeze(-1).repeat(1, 1, D)
    return torch.gather(x, 1, ids.unsqueeze(-1).repeat(1, 1, x.shape[-1]))


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D, K = s["B"], s["N"], s["D"], s["K"]
        x = torch.randn(B, N, D, device=device, dtype=dtype, requires_grad=True)
        ids = torch.rand(B, N, device=device).argsort(dim=1)[:, :K]
        gy = torch.randn(B, K, D, device=device, dtype=dtype)
        e, row = x.element_size(), B * D * x.element_size()
        # fwd: read K rows, write K rows; bwd: read K grad rows, write all N rows of dx.
        nbytes = {"fwd": 2 * K * row, "bwd": (K + N) * row, "fwd+bwd": (3 * K + N) * row}
        label = f"{shape} B={B} N={N} D={D} K={K}"
        for mode in modes:
            providers = op_providers(
                mk.gather_tokens, gather_tokens_ref, mdt_baseline, (x, ids), (x,), gy, mode, device
            )
            out.append(Case("gather_tokens", label, mode, nbytes[mode] + ids.numel() * 8 * (e > 0), providers))
    return out
