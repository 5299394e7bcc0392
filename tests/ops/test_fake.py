"""The fake (meta) kernels check their inputs as the real kernels do: tracing a bad call under
FakeTensorMode (as torch.compile does) raises a clear error instead of producing wrong shapes."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mdt_kernels as mk

ops = torch.ops.mdt_kernels
f32, f16, i64 = torch.float32, torch.float16, torch.int64


def t(*shape, dtype=f32):
    return torch.empty(shape, dtype=dtype)


# (op, good arguments, bad arguments, exception, message); tensors are created under FakeTensorMode.
CASES = {
    "adaln_modulate": (lambda: ops.adaln_modulate_triton, lambda: (t(2, 3, 4), t(2, 4), t(2, 4), 1e-6),
                       lambda: (t(2, 3, 4), t(2, 5), t(2, 4), 1e-6), ValueError, r"shift must have shape \(B, D\)"),
    "adaln_modulate eps": (lambda: ops.adaln_modulate_triton, lambda: (t(2, 3, 4), t(2, 4), t(2, 4), 0.0),
                           lambda: (t(2, 3, 4), t(2, 4), t(2, 4), -1.0), ValueError, "eps must be >= 0"),
    "adaln_modulate_backward": (
        lambda: ops.adaln_modulate_backward_triton, lambda: (t(2, 3, 4), t(2, 3, 4), t(2, 4), t(2, 3), t(2, 3)),
        lambda: (t(2, 3, 4, dtype=f16), t(2, 3, 4, dtype=f16), t(2, 4, dtype=f16), t(2, 3, dtype=f16), t(2, 3)),
        TypeError, "mean has dtype torch.float16, expected torch.float32"),
    "gated_residual": (lambda: ops.gated_residual_triton, lambda: (t(2, 3, 4), t(2, 4), t(2, 3, 4)),
                       lambda: (t(2, 3, 4), t(2, 4), t(2, 2, 4)), ValueError, r"y must have shape \(B, N, D\)"),
    "gated_residual dtype": (lambda: ops.gated_residual_triton, lambda: (t(2, 3, 4), t(2, 4), t(2, 3, 4)),
                             lambda: (t(2, 3, 4), t(2, 4, dtype=f16), t(2, 3, 4)), TypeError, "gate has dtype"),
    "residual_adaln_modulate_backward": (
        lambda: ops.residual_adaln_modulate_backward_triton,
        lambda: (None, t(2, 3, 4), t(2, 3, 4), t(2, 3, 4), t(2, 4), t(2, 4), t(2, 3), t(2, 3)),
        lambda: (t(1, 3, 4), t(2, 3, 4), t(2, 3, 4), t(2, 3, 4), t(2, 4), t(2, 4), t(2, 3), t(2, 3)),
        ValueError, "grad_h must have shape"),
    "gather_tokens": (lambda: ops.gather_tokens_triton, lambda: (t(2, 5, 4), t(2, 3, dtype=i64)),
                      lambda: (t(2, 5, 4), t(3, 3, dtype=i64)), ValueError, "ids must have shape"),
    "unmask_tokens": (lambda: ops.unmask_tokens_triton, lambda: (t(2, 3, 4), t(2, 3, dtype=i64), t(4), 5, None),
                      lambda: (t(2, 3, 4), t(2, 3, dtype=i64), t(4), 5, t(5, 3)), ValueError,
                      "pos_embed must have shape"),
    "linear_gelu": (lambda: ops.linear_gelu_triton, lambda: (t(2, 3, 4), t(6, 4), t(6)),
                    lambda: (t(2, 3, 4), t(6, 5), t(6)), ValueError, r"weight must have shape \(Dout, Din\)"),
    "masked_rel_pos_bias": (lambda: ops.masked_rel_pos_bias_triton, lambda: (t(9, 2), 2, t(2, 3, dtype=i64)),
                            lambda: (t(8, 2), 2, t(2, 3, dtype=i64)), ValueError, "table has 8 rows"),
    "rel_pos_attention": (lambda: ops.rel_pos_attention_triton,
                          lambda: (t(2, 3, 3, 2, 4), t(9, 2), 2, t(2, 3, dtype=i64), 0.5),
                          lambda: (t(2, 3, 3, 2, 4), t(9, 3), 2, t(2, 3, dtype=i64), 0.5), ValueError,
                          "table must have shape"),
    "rel_pos_attention_backward": (
        lambda: ops.rel_pos_attention_backward_triton,
        lambda: (t(2, 3, 2, 4), t(2, 3, 3, 2, 4), t(9, 2), t(2, 2, 3, 2), t(2, 3, dtype=i64), 2, 0.5),
        lambda: (t(2, 3, 2, 4), t(2, 3, 3, 2, 4), t(9, 2), t(2, 2, 3, 3), t(2, 3, dtype=i64), 2, 0.5), ValueError,
        "stats must have shape"),
    "adan_step": (lambda: ops.adan_step_triton,
                  lambda: ([t(3)], [t(3)], [t(3)], [t(3)], [t(3)], [t(3)], t(1), *(0.1,) * 9, False, True),
                  lambda: ([t(3)], [t(4)], [t(3)], [t(3)], [t(3)], [t(3)], t(1), *(0.1,) * 9, False, True),
                  ValueError, r"grads\[0\] must have shape"),
}
if "cpu" in mk.available_backends("cpu"):  # the C++ op without a Triton twin
    CASES["linear"] = (lambda: ops.linear, lambda: (t(2, 3, 4), t(6, 4), None),
                       lambda: (t(2, 3, 4), t(6, 4), t(5)), ValueError, r"bias must have shape \(Dout,\)")


@pytest.mark.parametrize("op,good,bad,exc,match", CASES.values(), ids=CASES.keys())
def test_fake_kernel_checks_inputs(op, good, bad, exc, match):
    with FakeTensorMode():
        op()(*good())  # well-formed inputs trace
        with pytest.raises(exc, match=match):
            op()(*bad())


def test_meta_tensors_checked():
    # Meta tensors take the same fake kernels.
    x, shift, scale = (torch.empty(s, device="meta") for s in [(2, 3, 4), (2, 4), (3, 4)])
    with pytest.raises(ValueError, match="scale must have shape"):
        ops.adaln_modulate_triton(x, shift, scale, 1e-6)
