"""Test set-up. Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; the
variable must be set before triton is first imported, so it is set here, before anything imports it.
The cuda_sim backend (tests/cuda_sim: the CUDA kernels on the CPU) is attached to mdt_kernels here, before
any test module lists the backends."""

import os

import pytest

if os.environ.get("TRITON_INTERPRET") is None:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

# A run with ATen capped (ATEN_CPU_CAPABILITY, as in .ci/run's second pass) gets an inductor cache of its
# own: torch.compile would otherwise build the C++ kernels an uncapped run wrote for wider vectors, or the
# other way round (wrong numbers, a corrupt heap).
from mdt_kernels._dispatch import use_inductor_cache_per_aten_capability  # noqa: E402

use_inductor_cache_per_aten_capability()

import cuda_sim  # noqa: E402

cuda_sim.attach()


def pytest_configure(config):
    # Marks of the backend params (helpers.backend_device_pairs): `-m "not cuda_sim and not reference"` keeps
    # the tests of the kernels that depend on the CPU's instruction set (.ci/run's capped passes).
    config.addinivalue_line("markers", "cuda_sim: runs a CUDA kernel on the CPU (tests/cuda_sim)")
    config.addinivalue_line("markers", "reference: runs the PyTorch reference of an op")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


_GPU_ONLY = []


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device, the tests marked cuda (the cuda and triton backends on CUDA tensors) cannot
    run: they are deselected and counted in one summary line (MDT_KERNELS_LIST_GPU_SKIPS=1 keeps them, as
    skips one by one). Their CUDA kernels still run here through the cuda_sim params."""
    import torch

    if torch.cuda.is_available() or os.environ.get("MDT_KERNELS_LIST_GPU_SKIPS") == "1":
        return
    gpu = [item for item in items if item.get_closest_marker("cuda") is not None]
    if gpu:
        items[:] = [item for item in items if item.get_closest_marker("cuda") is None]
        config.hook.pytest_deselected(items=gpu)
        _GPU_ONLY.extend(item.nodeid for item in gpu)


def pytest_terminal_summary(terminalreporter):
    if _GPU_ONLY:
        terminalreporter.write_line(
            f"{len(_GPU_ONLY)} tests need a physical GPU (no CUDA device here): deselected; the cuda_sim params "
            "ran the CUDA kernels on the CPU (MDT_KERNELS_LIST_GPU_SKIPS=1 lists them as skips)")
