"""Triton, when installed. Op files decorate kernels with `jit` and annotate with `tl.constexpr`; without
Triton those stay plain (never called: the dispatcher reports the triton backend as unavailable)."""

try:
    import triton
    import triton.language as tl

    jit = triton.jit
    cdiv = triton.cdiv
    next_power_of_2 = triton.next_power_of_2
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None

    class tl:  # noqa: N801 - stands in for the triton.language module
        constexpr = None

    def jit(fn):
        return fn

    def cdiv(a: int, b: int) -> int:
        return -(-a // b)

    def next_power_of_2(n: int) -> int:
        return 1 << max(n - 1, 0).bit_length()


def block_size(n: int, cap: int = 1024) -> int:
    """A power-of-two block covering n elements (at least 16), at most cap."""
    return max(16, min(cap, next_power_of_2(max(n, 1))))


def acc_dtype(dtype):
    """Accumulation dtype of a kernel: float64 for float64 data, else float32."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype):
    """acc_dtype as a Triton type (a kernel's ACC constexpr)."""
    import torch

    return tl.float64 if dtype == torch.float64 else tl.float32
