"""Model tests run single-threaded: the models are tiny, and on a busy shared CPU OpenMP's spinning worker
threads make intra-op parallelism 10-20x slower, not faster."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
