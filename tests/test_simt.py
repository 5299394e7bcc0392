"""The host execution layer of the cuda_sim backend (csrc/simt) against the CUDA semantics it promises:
its self-test kernels (csrc/simt/selftest_kernels.cpp) through mdt_kernels_sim::simt_selftest."""

import os

import pytest
import torch

import mdt_kernels as mk

_WHY = mk._dispatch.unavailable_reason("cuda_sim", "cpu")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=str(_WHY))


def run(name, x=None):
    x = torch.zeros(1) if x is None else x
    return torch.ops.mdt_kernels_sim.simt_selftest(name, x)


def test_shared_memory_tree_reduction_per_block():
    x = torch.randn(1000)
    out = run("block_sum", x)
    ref = torch.nn.functional.pad(x, (0, 24)).view(4, 256).double().sum(1)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)


def test_warp_collectives():
    x = torch.randn(32)
    out = run("warp_ops", x)[:256].view(32, 8)
    lane = torch.arange(32)
    down3 = torch.where(lane + 3 < 32, lane + 3, lane)
    up5 = torch.where(lane >= 5, lane - 5, lane)
    xor1_w8 = lane ^ 1
    down2_w16 = torch.where(lane % 16 + 2 < 16, lane + 2, lane)
    torch.testing.assert_close(out[:, 0], x[down3], atol=0, rtol=0)
    torch.testing.assert_close(out[:, 1], x[up5], atol=0, rtol=0)
    torch.testing.assert_close(out[:, 2], x.flip(0), atol=0, rtol=0)
    torch.testing.assert_close(out[:, 3], x[xor1_w8], atol=0, rtol=0)
    torch.testing.assert_close(out[:, 4], x[down2_w16], atol=0, rtol=0)
    ballot = sum(1 << i for i in range(32) if x[i] > 0)
    assert torch.equal(out[:, 5], torch.full((32,), float(ballot)))  # as float32, as the kernel stores it
    torch.testing.assert_close(out[:, 6], torch.full((32,), x.sum().item()), atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, 6], out[0, 6].expand(32))  # the butterfly gives every lane the same bits
    torch.testing.assert_close(out[:, 7], x.flip(0), atol=0, rtol=0)  # dynamic shared memory, after __syncwarp


@pytest.mark.parametrize("name,pattern", [
    ("barrier_exit", "has exited"),
    ("barrier_divergent", "divergent __syncthreads"),
    ("shfl_absent_lane", "named in the mask has exited"),
    ("shfl_outside_mask", "not in the mask"),
    ("threads_1025", "more than 1024 threads"),
    ("block_z_65", "more than 1024 threads"),
    ("grid_y_65536", "grid beyond"),
    ("grid_x_2^31", "grid beyond"),
    ("smem_48k_plus_1", "without cudaFuncSetAttribute"),
])
def test_undefined_on_a_gpu_raises(name, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        run(name)


@pytest.mark.parametrize("name", ["threads_1024", "smem_48k", "smem_opt_in"])
def test_limits_themselves_launch(name):
    assert run(name)[:32].tolist() == [1.0] * 32


def test_failed_device_check_is_a_python_exception():
    run("device_check", torch.ones(8))
    with pytest.raises(RuntimeError, match=r"device-side assertion failed: x\[.*\] >= 0.f at .*selftest_kernels.cpp:"
                                           r"\d+ in block \(0,0,0\) thread \(1,0,0\)"):
        run("device_check", torch.tensor([1.0, -1.0, 1.0]))
    run("device_check", torch.ones(8))  # the next launch runs again


@pytest.mark.skipif(os.environ.get("SIMT_RACECHECK") == "0" or os.environ.get("MDT_CUDA_SIM") == "asan",
                    reason="the race check is off (SIMT_RACECHECK=0) or not built in (the ASan build)")
@pytest.mark.parametrize("name,pattern", [("race", "shared-memory race"), ("warp_race", "shared-memory race")])
def test_shared_memory_race_is_reported(name, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        run(name)


def test_ordered_exchanges_are_no_race():
    assert run("no_race")[:64].tolist() == [float(63 - t) for t in range(64)]
    assert run("warp_no_race")[:32].tolist() == [float(t ^ 1) for t in range(32)]


def test_half_and_bfloat16_round_to_nearest_even_as_cuda():
    # Ties, subnormals, overflow, NaN and random values: CUDA's __float2half_rn / __float2bfloat16_rn are
    # round-to-nearest-even conversions, as torch's.
    special = torch.tensor([0.0, -0.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 2**-24,
                            2**-25, 3 * 2**-26, 2**-14 - 2**-25, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.4e38, float("inf"),
                            float("-inf"), 2**-133, 2**-134, 1e-40])
    x = torch.cat([special, torch.randn(200) * 10.0 ** torch.randint(-8, 6, (200,))])
    out = run("half", x)
    n = x.numel()
    assert torch.equal(out[:n], x.half().view(torch.int16))
    assert torch.equal(out[n:2 * n], x.bfloat16().view(torch.int16))
    nan = run("half", torch.tensor([float("nan")]))
    assert torch.isnan(nan[:1].view(torch.float16)).all() and torch.isnan(nan[1:2].view(torch.bfloat16)).all()


def test_half_atomic_add_rounds_every_step():
    x = torch.full((64,), 1.0 + 2**-10)
    out = run("half", x)
    acc_h, acc_b = torch.zeros((), dtype=torch.float16), torch.zeros((), dtype=torch.bfloat16)
    for v in x:  # the serial order of the simulated threads
        acc_h = (acc_h.float() + v.half().float()).half()
        acc_b = (acc_b.float() + v.bfloat16().float()).bfloat16()
    assert out[128:129].view(torch.float16).item() == acc_h.item()
    assert out[129:130].view(torch.bfloat16).item() == acc_b.item()
