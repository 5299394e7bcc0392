"""torch.compile under a capped ATen (ATEN_CPU_CAPABILITY): each capability compiles into an inductor cache
of its own (mdt_kernels._dispatch.use_inductor_cache_per_aten_capability), which the test suite and the
`mdt` command apply; one cache shared by a capped and an uncapped process gives wrong numbers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdt_kernels._dispatch import use_inductor_cache_per_aten_capability

ROOT = Path(__file__).resolve().parents[1]

# A vectorised elementwise kernel and a reduction on 1000 floats, compiled by inductor; prints the largest
# error against float64.
_COMPILE = """
import torch
from mdt_kernels._dispatch import use_inductor_cache_per_aten_capability

use_inductor_cache_per_aten_capability()
x = torch.linspace(-3, 3, 1000)
y, s = torch.compile(lambda x: ((torch.tanh(x) * x).exp(), (torch.tanh(x) * x).exp().sum()))(x)
want = (torch.tanh(x.double()) * x.double()).exp()
print(max(float((y - want).abs().max()), abs(float(s) - float(want.sum())) / float(want.sum())))
"""


def _compile(tmp_path, cap):
    """Runs _COMPILE in a fresh process, capped at cap (None: uncapped); inductor's default cache directory
    lies in tmp_path (TMPDIR), shared by every call with that tmp_path. Returns the largest error."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(TMPDIR=str(tmp_path), **({"ATEN_CPU_CAPABILITY": cap} if cap else {}))
    r = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, f"ATEN_CPU_CAPABILITY={cap}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return float(r.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86-64 Linux")
def test_a_capped_compile_after_an_uncapped_one(tmp_path):
    """Shared, the capped process would build the kernels the uncapped one wrote for its wider vectors: at
    avx2 under AVX-512, wrong numbers (errors of order 1); at the baseline, a C++ compile error."""
    best = torch.backends.cpu.get_cpu_capability().lower()
    cap = "avx2" if best.startswith("avx512") else "default"
    assert _compile(tmp_path, None) < 1e-5
    assert _compile(tmp_path, cap) < 1e-5
    # The capability's cache directory under the default one's name.
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("torchinductor_"))
    assert len(names) == 2 and names[1] == f"{names[0]}_aten-{cap}"


def test_one_directory_per_capability():
    env = {"ATEN_CPU_CAPABILITY": "avx2"}
    avx2 = use_inductor_cache_per_aten_capability(env)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == avx2 and avx2.endswith("_aten-avx2")
    default = {"ATEN_CPU_CAPABILITY": "DEFAULT"}
    assert use_inductor_cache_per_aten_capability(default).endswith("_aten-default")
    assert avx2[: -len("avx2")] == default["TORCHINDUCTOR_CACHE_DIR"][: -len("default")]
    # Uncapped: torch's own default; a directory the user chose: theirs, whatever the cap.
    for env in ({}, {"ATEN_CPU_CAPABILITY": ""}, {"ATEN_CPU_CAPABILITY": "avx2", "TORCHINDUCTOR_CACHE_DIR": "/x"}):
        before = dict(env)
        assert use_inductor_cache_per_aten_capability(env) is None and env == before


def _cache_dir_after(code, cap):
    """TORCHINDUCTOR_CACHE_DIR in a fresh process capped at cap after it ran code."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(ATEN_CPU_CAPABILITY=cap)
    r = subprocess.run([sys.executable, "-c", f"{code}\nimport os; print(os.environ.get('TORCHINDUCTOR_CACHE_DIR'))"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()[-1]


def test_the_test_suite_applies_it():
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import conftest"
    assert _cache_dir_after(code, "avx2").endswith("_aten-avx2")


def test_the_mdt_command_applies_it():
    code = "import contextlib\nfrom mdt import cli\nwith contextlib.suppress(SystemExit): cli.main(['--help'])"
    assert _cache_dir_after(code, "default").endswith("_aten-default")
