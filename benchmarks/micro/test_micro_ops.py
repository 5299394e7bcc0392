"""pytest-benchmark microbenchmarks of the same (op, provider) rows as `python -m benchmarks.profile_ops`,
at S/2 shapes, forward+backward: `make bench-micro` (they are not part of `make test`)."""

import importlib
import pkgutil

import pytest
import torch

from benchmarks import cases as cases_pkg

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rows():
    for m in pkgutil.iter_modules(cases_pkg.__path__):
        mod = importlib.import_module(f"benchmarks.cases.{m.name}")
        if not hasattr(mod, "cases"):
            continue
        for case in mod.cases(DEVICE, torch.float32, ["S/2"], ["fwd+bwd"]):
            for provider in case.providers:
                yield pytest.param(case, provider, id=f"{case.op}-{provider}")


@pytest.mark.parametrize("case,provider", list(_rows()))
def test_op(benchmark, case, provider):
    fn = case.providers[provider]
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def run():
        fn()
        sync()

    benchmark.group = f"{case.op} {case.shape} {case.mode}"
    benchmark.extra_info["bytes"] = case.nbytes
    benchmark.pedantic(run, warmup_rounds=2, rounds=10, iterations=1)
    benchmark.extra_info["GB/s"] = case.nbytes / benchmark.stats.stats.median / 1e9
