"""Fused kernels for training Masked Diffusion Transformers (MDTv2).

Every op has a plain-PyTorch reference and C++ (CPU), CUDA and Triton kernels (``linear`` a CPU one
only, ``rel_pos_attention`` no CUDA one); ``use_backend`` picks which runs (``auto``: the fastest one
that can run for the tensors' device) inside a ``with`` block, ``set_backend`` from now on; ``op_kernels``
lists an op's backends for a device. ``use_cpu_gemm_engine`` / ``set_cpu_gemm_engine`` pick the GEMM of
the CPU kernels, ``use_cpu_capability`` / ``set_cpu_capability`` their instruction set.
"""

from ._dispatch import (
    BACKENDS,
    CPU_CAPABILITIES,
    CPU_GEMM_ENGINES,
    BackendError,
    available_backends,
    cpu_capabilities,
    cpu_capability,
    cpu_gemm_engine,
    cpu_gemm_setting,
    get_backend,
    op_kernels,
    runs_fused,
    set_backend,
    set_cpu_capability,
    set_cpu_gemm_engine,
    use_backend,
    use_cpu_capability,
    use_cpu_gemm_engine,
)
from .ops.adaln import adaln_modulate, gated_residual, residual_adaln_modulate
from .ops.adan import adan_step
from .ops.gather_tokens import gather_tokens
from .ops.linear import linear
from .ops.linear_gelu import linear_gelu
from .ops.masked_rel_pos_bias import masked_rel_pos_bias
from .ops.rel_pos_attention import rel_pos_attention
from .ops.unmask_tokens import unmask_tokens

__all__ = [
    "BACKENDS",
    "CPU_CAPABILITIES",
    "CPU_GEMM_ENGINES",
    "BackendError",
    "adaln_modulate",
    "adan_step",
    "available_backends",
    "cpu_capabilities",
    "cpu_capability",
    "cpu_gemm_engine",
    "cpu_gemm_setting",
    "gated_residual",
    "gather_tokens",
    "get_backend",
    "linear",
    "linear_gelu",
    "masked_rel_pos_bias",
    "op_kernels",
    "rel_pos_attention",
    "residual_adaln_modulate",
    "runs_fused",
    "set_backend",
    "set_cpu_capability",
    "set_cpu_gemm_engine",
    "unmask_tokens",
    "use_backend",
    "use_cpu_capability",
    "use_cpu_gemm_engine",
]
__version__ = "0.1.0"
