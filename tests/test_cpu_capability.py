"""Run-time instruction-set dispatch of the CPU kernels (csrc/cpu/isa.h): what is reported, how it is
capped and set, and the vectorised kernels checked against their oracles at every capability this CPU
runs (the rest of the suite runs at the process's capability; CI runs tests/ops again capped)."""

import os
import platform
import subprocess
import sys

import pytest
import torch

import mdt_kernels as mk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "ops"))  # the per-op suites' checks, reused below

NO_EXT = mk._dispatch.unavailable_reason("cpu", "cpu")
pytestmark = pytest.mark.skipif(NO_EXT is not None, reason=f"C++ extension not built: {NO_EXT}")
X86 = platform.machine().lower() in ("x86_64", "amd64")


def expected_capabilities():
    """From PyTorch's cpuinfo, not from our extension: what a portable x86-64 build must offer here."""
    if not X86:
        return ["default"]
    cpu = torch.cpu.get_capabilities()
    has = lambda *keys: all(cpu.get(k, False) for k in keys)  # noqa: E731
    out = ["default"]
    if has("avx2", "fma3", "f16c"):
        out.append("avx2")
        if has("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"):
            out.append("avx512")
    return out


def env_capped():
    return bool(os.environ.get("MDT_KERNELS_CPU_CAPABILITY") or os.environ.get("ATEN_CPU_CAPABILITY"))


def test_reported_capabilities_follow_the_cpu():
    assert mk.cpu_capabilities() == expected_capabilities()
    assert mk.cpu_capability() in mk.cpu_capabilities()
    if not env_capped():
        assert mk.cpu_capability() == mk.cpu_capabilities()[-1]  # the best one by default


def test_use_cpu_capability_sets_and_restores():
    before = mk.cpu_capability()
    for cap in mk.cpu_capabilities():
        with mk.use_cpu_capability(cap):
            assert mk.cpu_capability() == cap
        assert mk.cpu_capability() == before
    with pytest.raises(ValueError, match="unknown CPU capability 'sse9'"):
        mk.use_cpu_capability("sse9")
    for cap in set(mk.CPU_CAPABILITIES) - set(mk.cpu_capabilities()):
        with pytest.raises(ValueError, match=f'"{cap}" is not available'):
            mk.set_cpu_capability(cap)
        with pytest.raises(ValueError, match=f'"{cap}" is not available'), mk.use_cpu_capability(cap):
            pass
    assert mk.cpu_capability() == before
    lowest = mk.use_cpu_capability(mk.cpu_capabilities()[0])  # constructing it changes nothing
    assert mk.cpu_capability() == before
    try:
        mk.set_cpu_capability(lowest.name)
        assert mk.cpu_capability() == lowest.name
    finally:
        mk.set_cpu_capability(before)


def _in_subprocess(env):
    code = ("import mdt_kernels as mk\n"
            "try:\n    print(mk.cpu_capability())\nexcept ValueError as e:\n    print('ValueError', e)\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("MDT_KERNELS_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("var", ["MDT_KERNELS_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY"])
def test_environment_caps(var):
    best = expected_capabilities()[-1]
    assert _in_subprocess({var: "default"}) == "default"
    assert _in_subprocess({var: "AVX2"}) == ("avx2" if best != "default" else "default")
    assert _in_subprocess({var: "avx512"}) == best  # a cap above the CPU is no cap


def test_another_architectures_capability():
    other = "sve256" if X86 else "avx2"
    # ours: a setting shared by a mixed cluster caps at the baseline; ATen's: ignored, as ATen does
    assert _in_subprocess({"MDT_KERNELS_CPU_CAPABILITY": other}) == "default"
    assert _in_subprocess({"ATEN_CPU_CAPABILITY": other}) == expected_capabilities()[-1]
    with pytest.raises(ValueError, match=f'"{other}" is not available'):
        mk.set_cpu_capability(other)


def test_environment_errors():
    assert "MDT_KERNELS_CPU_CAPABILITY: unknown CPU capability \"avx1024\"" in _in_subprocess(
        {"MDT_KERNELS_CPU_CAPABILITY": "avx1024"})
    # ATen's variable also names other architectures' sets (zvector, sve256): not ours to reject.
    assert _in_subprocess({"ATEN_CPU_CAPABILITY": "zvector"}) == expected_capabilities()[-1]
    # Ours wins over ATen's.
    assert _in_subprocess({"MDT_KERNELS_CPU_CAPABILITY": "default", "ATEN_CPU_CAPABILITY": "avx2"}) == "default"


# ---------------------------------------------------------------------------------------------------
# The vectorised kernels at every capability, against the same oracles as tests/ops

CAPS = [pytest.param(c, id=c) for c in (mk.cpu_capabilities() if NO_EXT is None else ["default"])]


@pytest.fixture(params=CAPS)
def capability(request):
    with mk.use_cpu_capability(request.param):
        yield request.param


def test_adan_every_dtype(capability):
    import test_adan as t  # tests/ops

    for dtypes in t.DTYPES.values():
        for no_prox in (False, True):
            t.test_matches_oracle("cpu", "cpu", dtypes, no_prox, 0.4)
    t.test_mixed_dtypes_and_shapes_in_one_call("cpu", "cpu")
    t.test_unaligned_views("cpu", "cpu")
    t.test_large_tensor_chunks("cpu", "cpu")


def test_global_norm(capability):
    import test_adan as t

    t.test_global_norm("cpu", "cpu")
    for bad, expected in [(float("nan"), "nan"), (float("inf"), "inf"), (1e30, "inf")]:
        t.test_global_norm_nonfinite("cpu", "cpu", bad, expected)


@pytest.mark.parametrize("op", ["adaln_modulate", "residual_adaln_modulate", "gated_residual"])
def test_adaln_family(capability, op):
    import test_adaln as t

    v = t.VARIANTS[op]
    for dtype in t.DTYPES.values():
        for B, N, D in t.SHAPES:
            t.test_matches_reference(v, "cpu", "cpu", dtype, B, N, D)
    t.test_cpu_large_call_streaming_stores(v)
    t.test_cpu_backward_is_deterministic(v)


def test_linear_gelu(capability):
    import test_linear_gelu as t

    for dtype in t.ALL_DTYPES.values():
        for x_shape, dout in t.LINEAR_SHAPES:
            t.test_matches_reference("cpu", "cpu", dtype, x_shape, dout)
        t.test_saturated_and_near_zero_inputs("cpu", "cpu", dtype)
    t.test_cpu_backward_is_deterministic()


def test_rel_pos_attention(capability):
    import test_rel_pos_attention as t

    for dtype in t.ALL_DTYPES.values():
        for case in t.CASES:
            t.test_matches_reference("cpu", "cpu", dtype, *case)
    t.test_explicit_scale_and_large_logits("cpu", "cpu")
    t.test_gradcheck("cpu", "cpu")
    t.test_cpu_backward_is_deterministic()
