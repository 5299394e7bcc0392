"""rel_pos_attention rows, for the masked encoder (K kept tokens) and the full grid (all N tokens).

Baseline: sail-sg/MDT's Attention as written: split and transpose qkv, gather the (B,H,K,K) bias from the
full (H,N,N) one, explicit q k^T * scale + bias, softmax, @ v, transpose back. The eager reference is the
bias + scaled_dot_product_attention form the model used before this kernel. Attention is compute-bound
(the four K x K x Dh products), so GB/s (qkv and out read/written once) is not its limit.
"""

import torch

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from mdt_kernels.ops.masked_rel_pos_bias import relative_position_index
from mdt_kernels.ops.rel_pos_attention import rel_pos_attention_ref

from .masked_rel_pos_bias import mdt_baseline as mdt_bias


def mdt_attention(index, masked):
    bias_of = mdt_bias(index)

    def run(qkv, table, grid_size, ids_keep=None):
        B, K, _, H, Dh = qkv.shape
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if masked:
            bias = bias_of(table, grid_size, ids_keep)
        else:
            bias = table[index.reshape(-1)].reshape(K, K, H).permute(2, 0, 1).unsqueeze(0)
        attn = (q @ k.transpose(-2, -1)) * Dh**-0.5 + bias
        return (attn.softmax(dim=-1) @ v).transpose(1, 2)

    return run


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, G, H, D, K = s["B"], s["N"], s["G"], s["H"], s["D"], s["K"]
        R = (2 * G - 1) ** 2 + 3
        index = relative_position_index(G, device)
        table = (0.02 * torch.randn(R, H, device=device, dtype=dtype)).requires_grad_(True)
        for masked in (True, False):
            T = K if masked else N
            qkv = torch.randn(B, T, 3, H, D // H, device=device, dtype=dtype).requires_grad_(True)
            ids = torch.rand(B, N, device=device).argsort(dim=1)[:, :K] if masked else None
            gy = torch.randn(B, T, H, D // H, device=device, dtype=dtype)
            e = qkv.element_size()
            # forward reads qkv and writes out; backward reads qkv and d_out and writes d_qkv.
            nbytes = {"fwd": 4 * B * T * D * e, "bwd": 7 * B * T * D * e, "fwd+bwd": 11 * B * T * D * e}
            label = f"{shape} B={B} H={H} " + (f"K={K} of N={N}" if masked else f"N={N}")
            for mode in modes:
                providers = op_providers(mk.rel_pos_attention, rel_pos_attention_ref, mdt_attention(index, masked),
                                         (qkv, table, G, ids), (qkv, table), gy, mode, device)
                out.append(Case("rel_pos_attention", label, mode, nbytes[mode], providers))
    return out
