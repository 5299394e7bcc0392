"""`mdt train --no-fused` runs every mdt_kernels op on the PyTorch reference: the training loop, and the final
sampling and evaluation after it (which once ran fused: the trainer entered one use_backend object twice)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mdt_kernels as mk
from mdt.cli import main

ARGS = ["train", "--model", "MDTv2-Ti/2", "--data", "digits", "--batch-size", "8", "--steps", "2", "--lr", "1e-3",
        "--log-every", "1", "--ckpt-every", "2", "--eval-samples", "4", "--sample-steps", "2", "--no-progress",
        "--threads", "1"]


class CompiledOps(TorchDispatchMode):
    """Records every call of a registered mdt_kernels op (C++, CUDA or Triton form; forward or backward)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace.startswith("mdt_kernels"):
            self.seen.add(func.name())
        return func(*args, **(kwargs or {}))


def _ops_of_run(out, *extra):
    with CompiledOps() as ops:
        assert main(ARGS + ["--out", str(out), *extra]) == 0
    return ops.seen


NEEDS_EXT = pytest.mark.skipif(mk._dispatch.unavailable_reason("cpu", "cpu") is not None,
                               reason="C++ extension not built")


@NEEDS_EXT
def test_no_fused_runs_no_kernel_from_training_to_final_evaluation(tmp_path):
    start = mk.get_backend()
    # The check can fail: the fused run calls the kernels, in its loop and in its final sampling.
    fused = _ops_of_run(tmp_path / "fused")
    assert {"mdt_kernels::gather_tokens", "mdt_kernels::adan_step_", "mdt_kernels::adaln_modulate"} <= fused, fused
    assert not _ops_of_run(tmp_path / "unfused", "--no-fused")
    assert mk.get_backend() == start
    # Evaluating the finished run again (the final sampling alone) is unfused too.
    assert not _ops_of_run(tmp_path / "unfused", "--no-fused", "--resume", "auto")
    assert (tmp_path / "unfused" / "eval.json").exists()


@NEEDS_EXT
def test_recorder_sees_the_kernels_autograd_calls():
    x, ids = torch.randn(2, 4, 3, requires_grad=True), torch.tensor([[0, 2], [1, 3]])
    with CompiledOps() as ops, mk.use_backend("cpu"):
        mk.gather_tokens(x, ids).sum().backward()
    assert ops.seen == {"mdt_kernels::gather_tokens", "mdt_kernels::gather_tokens_backward"}
