"""unmask_tokens rows: MDT's cat(mask tokens) + gather(ids_restore, repeated index) + pos_embed is the baseline."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.unmask_tokens import unmask_tokens_ref


def mdt_baseline(ids_restore):
    def run(x_kept, ids_keep, mask_token, num_tokens, pos_embed):
        # sail-sg/MDT side-interpolater input: append mask tokens, un-shuffle, add decoder_pos_embed
        B, K, D = x_kept.shape
        x = torch.cat([x_kept, mask_token.reshape(1, 1, D).repeat(B, num_tokens - K, 1)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, D))
        return x + pos_embed

    return run


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D, K = s["B"], s["N"], s["D"], s["K"]
        ids_shuffle = torch.rand(B, N, device=device).argsort(dim=1)
        ids_keep, ids_restore = ids_shuffle[:, :K], ids_shuffle.argsort(dim=1)
        xk = torch.randn(B, K, D, device=device, dtype=dtype, requires_grad=True)
        mt = torch.randn(D, device=device, dtype=dtype, requires_grad=True)
        pe = torch.randn(N, D, device=device, dtype=dtype, requires_grad=True)
        gy = torch.randn(B, N, D, device=device, dtype=dtype)
        row = D * xk.element_size()
        # fwd: read K rows per sample (+ N pos rows once), write N rows per sample.
        # bwd: read N grad rows per sample, write K rows per sample (+ N pos rows + 1 mask row once).
        fwd, bwd = (B * (K + N) + N) * row, (B * (N + K) + N + 1) * row
        nbytes = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}
        label = f"{shape} B={B} N={N} D={D} K={K}"
        for mode in modes:
            providers = op_providers(mk.unmask_tokens, unmask_tokens_ref, mdt_baseline(ids_restore),
                                     (xk, ids_keep, mt, N, pe), (xk, mt, pe), gy, mode, device)
            out.append(Case("unmask_tokens", label, mode, nbytes[mode], providers))
    return out
