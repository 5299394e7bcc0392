"""Fused kernels for training Masked Diffusion Transformers (MDTv2).

Every op has a plain-PyTorch reference and C++ (CPU), CUDA and Triton kernels; ``use_backend`` picks
which runs (``auto``: the fastest one that can run for the tensors' device).
"""

from ._dispatch import BACKENDS, BackendError, available_backends, get_backend, use_backend
from .ops.adaln_modulate import adaln_modulate
from .ops.gated_residual import gated_residual
from .ops.gather_tokens import gather_tokens
from .ops.masked_rel_pos_bias import masked_rel_pos_bias
from .ops.residual_adaln_modulate import residual_adaln_modulate
from .ops.unmask_tokens import unmask_tokens

__all__ = [
    "BACKENDS",
    "BackendError",
    "adaln_modulate",
    "available_backends",
    "gated_residual",
    "gather_tokens",
    "get_backend",
    "masked_rel_pos_bias",
    "unmask_tokens",
    "residual_adaln_modulate",
    "use_backend",
]
__version__ = "0.1.0"
