"""benchmarks/gpu_session.sh runs only on a lent GPU, so these tests keep it from rotting on machines without
one: every benchmark command in it must parse with that benchmark's own command line and name real models,
and without a GPU the script must stop, saying so, instead of benchmarking the CPU."""

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdt.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def benchmark_commands() -> list[tuple[str, list[str]]]:
    """(module, argv) of each `$PY -m benchmarks.<module> ...` line, continuations joined, redirections cut."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    commands = []
    for m in re.finditer(r"\$PY -m benchmarks\.(\w+)([^\n]*)", text):
        argv = shlex.split(re.split(r"\s[0-9]?>", m.group(2))[0].replace('"$OUT"', "out"))
        commands.append((m.group(1), argv))
    return commands


def test_script_names_the_issue_7_train_steps():
    modules = [name for name, _ in benchmark_commands()]
    assert {"train_step", "profile_ops", "optim_step"} <= set(modules), modules
    (argv,) = [a for name, a in benchmark_commands() if name == "train_step"]
    args = importlib.import_module("benchmarks.train_step").build_parser().parse_args(argv)
    assert args.device == "cuda" and args.precision == "bf16"
    assert {"MDTv2-S/2", "MDTv2-XL/2"} <= set(args.models)


@pytest.mark.parametrize("module,argv", benchmark_commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_benchmark_command_parses(module, argv):
    parser = importlib.import_module(f"benchmarks.{module}").build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse reports the bad option on stderr and exits
        pytest.fail(f"gpu_session.sh: `benchmarks.{module} {shlex.join(argv)}` does not parse (exit {e.code})")
    assert args.device == "cuda", "the GPU session must benchmark the GPU"
    for model in getattr(args, "models", []):
        assert model in MODELS, model
    for shape in getattr(args, "shapes", "").split(","):
        assert shape == "" or any(name.endswith(shape) for name in MODELS), shape


def test_script_syntax_and_usage():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    r = subprocess.run(["bash", str(SCRIPT), "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("stage", ["step", "test", "ops"])
def test_script_refuses_without_a_gpu(tmp_path, stage):
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable)
    r = subprocess.run(["bash", str(SCRIPT), stage], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no usable GPU" in r.stderr
    assert not list(tmp_path.glob("*.md")), "nothing may be benchmarked without a GPU"
