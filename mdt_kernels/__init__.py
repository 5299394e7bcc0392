"""Fused kernels for training Masked Diffusion Transformers (MDTv2).

Every op has a plain-PyTorch reference and C++ (CPU), CUDA and Triton kernels; ``use_backend`` picks
which runs (``auto``: the fastest one that can run for the tensors' device).
"""

from ._dispatch import BACKENDS, BackendError, available_backends, get_backend, use_backend
from .ops.adaln_modulate import adaln_modulate
from .ops.adan import adan_step
from .ops.gated_residual import gated_residual
from .ops.gather_tokens import gather_tokens
from .ops.linear_gelu import linear_gelu
from .ops.masked_rel_pos_bias import masked_rel_pos_bias
from .ops.rel_pos_attention import rel_pos_attention
from .ops.residual_adaln_modulate import residual_adaln_modulate
from .ops.unmask_tokens import unmask_tokens

__all__ = [
    "BACKENDS",
    "BackendError",
    "adaln_modulate",
    "adan_step",
    "available_backends",
    "gated_residual",
    "gather_tokens",
    "get_backend",
    "linear_gelu",
    "masked_rel_pos_bias",
    "rel_pos_attention",
    "residual_adaln_modulate",
    "unmask_tokens",
    "use_backend",
]
__version__ = "0.1.0"
