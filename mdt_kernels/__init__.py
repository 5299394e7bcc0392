"""Fused kernels for training Masked Diffusion Transformers (MDTv2).

Every op has a plain-PyTorch reference and, as its declaration in ``mdt_kernels/ops/<op>.py`` says, C++ (CPU),
CUDA and Triton kernels; ``use_backend`` picks which runs (``auto``: the fastest one that can run for the
tensors' device) inside a ``with`` block, ``set_backend`` from now on; ``op_kernels`` lists an op's backends
for a device. ``use_cpu_gemm_engine`` / ``set_cpu_gemm_engine`` pick the GEMM of the CPU kernels,
``use_cpu_capability`` / ``set_cpu_capability`` their instruction set. The ops' public functions are exported
from their declarations (mdt_kernels._registry): ``mdt_kernels.<op>``.
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
from ._registry import all_ops

OPS = tuple(sorted(all_ops()))  # the op names
globals().update({name: op.function for name, op in all_ops().items()})

__all__ = [
    "BACKENDS",
    "CPU_CAPABILITIES",
    "CPU_GEMM_ENGINES",
    "OPS",
    "BackendError",
    "available_backends",
    "cpu_capabilities",
    "cpu_capability",
    "cpu_gemm_engine",
    "cpu_gemm_setting",
    "get_backend",
    "op_kernels",
    "runs_fused",
    "set_backend",
    "set_cpu_capability",
    "set_cpu_gemm_engine",
    "use_backend",
    "use_cpu_capability",
    "use_cpu_gemm_engine",
    *OPS,
]
__version__ = "0.1.0"
