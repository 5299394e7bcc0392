"""linear_gelu rows: the MLP's fc1 + GELU(tanh) at D -> 4D. Eager and the baseline are both what DiT/MDT
run (nn.Linear then nn.GELU), so the baseline column is left out. The GEMMs dominate (compute-bound);
GB/s counts x, W, y (and h) read/written once, so it is far below the copy bandwidth by nature."""

import mdt_kernels as mk
from benchmarks._harness import SHAPES, Case, op_providers
from benchmarks.cases.linear import gemm_inputs
from mdt_kernels.ops.linear_gelu import linear_gelu_ref


def cases(device, dtype, shapes, modes):
    out = []
    for shape in shapes:
        s = SHAPES[shape]
        B, N, D = s["B"], s["N"], s["D"]
        inputs, g, nbytes = gemm_inputs(B, N, D, 4 * D, device, dtype)
        label = f"{shape} B={B} N={N} D={D}->{4 * D}"
        for mode in modes:
            providers = op_providers(mk.linear_gelu, linear_gelu_ref, None, inputs, inputs, g, mode, device)
            out.append(Case("linear_gelu", label, mode, nbytes[mode], providers))
    return out
