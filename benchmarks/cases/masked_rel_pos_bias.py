"""masked_rel_pos_bias rows: MDT's full (H,N,N) bias repeated over the batch and gathered twice is the baseline."""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.masked_rel_pos_bias import masked_rel_pos_bias_ref, relative_position_index


def mdt_baseline(index):
    def run(table, grid_size, ids_keep):
        # sail-sg/MDT Attention.get_masked_rel_bias: build (H,N,N), repeat to (B,H,N,N), gather rows, then columns
        N, H = index.shape[0], table.shape[1]
        full = table[index.reshape(-1)].reshape(N, N, H).permute(2, 0, 1).contiguous()
        B, K = ids_keep.shape
        full = full.unsqueeze(0).repeat(B, 1, 1, 1)
        rows = torch.gather(full, 2, ids_keep[:, None, :, None].repeat(1, H, 1, N))
        return torch.gather(rows, 3, ids_keep[:, None, None, :].repeat(1, H, K, 1))

    return run


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, G, H, K = s["B"], s["N"], s["G"], s["H"], s["K"]
        R = (2 * G - 1) ** 2 + 3  # MDT's table has 3 unused rows
        table = (0.02 * torch.randn(R, H, device=device, dtype=dtype)).requires_grad_(True)
        ids = torch.rand(B, N, device=device).argsort(dim=1)[:, :K]
        gy = torch.randn(B, H, K, K, device=device, dtype=dtype)
        e = table.element_size()
        # The (B,H,K,K) bias is written once forward and read once backward; table traffic is negligible.
        nbytes = {"fwd": B * H * K * K * e, "bwd": B * H * K * K * e, "fwd+bwd": 2 * B * H * K * K * e}
        baseline = mdt_baseline(relative_position_index(G, device))
        label = f"{shape} B={B} H={H} N={N} K={K}"
        for mode in modes:
            providers = op_providers(mk.masked_rel_pos_bias, masked_rel_pos_bias_ref, baseline, (table, G, ids),
                                     (table,), gy, mode, device)
            out.append(Case("masked_rel_pos_bias", label, mode, nbytes[mode], providers))
    return out
