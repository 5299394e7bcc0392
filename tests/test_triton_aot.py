"""benchmarks/triton_aot.py, the ahead-of-time compile check of the Triton kernels for sm_80/sm_90: one kernel
compiles for sm_90 from what its op wrapper launches, a shared-memory use over the limit fails the check, and
the attention backward at XL/2 in fp32 fits an A100's shared memory.
The script runs in a subprocess: the test session interprets Triton (TRITON_INTERPRET=1), the check must not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def aot(*args: str, arch: str = "90", shapes: str = "test") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "benchmarks.triton_aot", "--arch", arch, "--shapes", shapes,
                           "--dtype", "f32", "-j", "1", "-v", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_compiles_a_kernel_for_sm90():
    r = aot("--op", "gather_tokens", "--kernel", "_gather_tokens_fwd_kernel")
    assert r.returncode == 0, r.stdout + r.stderr
    # The wrapper's block sizes for D = 1, 97 and 4097 (block_size: a power of two >= 16, at most 1024).
    blocks = sorted(int(b) for b in re.findall(r"^ok +sm_90 _gather_tokens_fwd_kernel .*BLOCK_D=(\d+)", r.stdout, re.M))
    assert blocks == [16, 128, 1024], r.stdout
    assert re.search(r"^_gather_tokens_fwd_kernel +sm_90 +3 ", r.stdout, re.M), r.stdout
    assert "3 compiles" in r.stdout and "0 failed" in r.stdout


def test_shared_memory_over_the_limit_fails():
    # The attention forward stages its tiles in shared memory: a 1 KB limit must reject it.
    r = aot("--op", "rel_pos_attention", "--kernel", "_attn_fwd_kernel", "--smem-limit", "1024")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"shared memory \d+ B > sm_90 per-block limit 1024 B", r.stdout), r.stdout
    smem = [int(s) for s in re.findall(r"^FAIL +sm_90 _attn_fwd_kernel .* smem=(\d+)", r.stdout, re.M)]
    assert smem and all(s > 1024 for s in smem), r.stdout


def test_attention_backward_fits_an_a100_at_xl2_in_fp32():
    # XL/2 (Dh = 72, BLOCK_D = 128) in fp32: with Triton's default 3 pipeline stages the dq kernel needed
    # 172032 B of shared memory, over sm_80's 166912 B, so the backward could not launch on an A100.
    r = aot("--op", "rel_pos_attention", "--kernel", "_attn_bwd_dq_kernel", arch="80", shapes="mdt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^\S+ +sm_80 _attn_bwd_dq_kernel .*BLOCK_D=128", r.stdout, re.M), r.stdout
