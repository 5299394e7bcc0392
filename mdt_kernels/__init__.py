"""Fused kernels for training Masked Diffusion Transformers (MDTv2).

Every op has a plain-PyTorch reference and C++ (CPU), CUDA and Triton kernels (``linear`` a CPU one
only, ``rel_pos_attention`` no CUDA one); ``use_backend`` picks which runs (``auto``: the fastest one
that can run for the tensors' device). ``use_cpu_gemm_engine`` picks the GEMM of the CPU kernels.
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
    "rel_pos_attention",
    "residual_adaln_modulate",
    "unmask_tokens",
    "use_backend",
    "use_cpu_capability",
    "use_cpu_gemm_engine",
]
__version__ = "0.1.0"
