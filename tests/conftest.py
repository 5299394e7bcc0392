"""Test set-up. Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; the
variable must be set before triton is first imported, so it is set here, before anything imports it."""

import os

import pytest

# The cuda_sim backend (the CUDA kernels on the host execution layer csrc/simt) is test-only: this switch
# loads it (MDT_KERNELS_SIM=asan: the sanitizer build, see `make test-sanitize`).
os.environ.setdefault("MDT_KERNELS_SIM", "1")

if os.environ.get("TRITON_INTERPRET") is None:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
