"""Fused kernels for training Masked Diffusion Transformers (MDTv2).

Every op has a plain-PyTorch reference and C++ (CPU), CUDA and Triton kernels; ``use_backend`` picks
which runs (``auto``: the fastest one that can run for the tensors' device).
"""

from ._dispatch import BACKENDS, BackendError, available_backends, get_backend, use_backend
from .ops.adan import adan_step
from .ops.gather_tokens import gather_tokens

__all__ = [
    "BACKENDS",
    "BackendError",
    "adan_step",
    "available_backends",
    "gather_tokens",
    "get_backend",
    "use_backend",
]
__version__ = "0.1.0"
