"""benchmarks.sample end to end on a tiny model: one row per provider, samples compared with the reference's."""

import json

import pytest
import torch

from benchmarks import sample
from benchmarks._harness import device_tag

CPU = device_tag(torch.device("cpu"))  # e.g. cpu-avx2: the capability the kernels run

TINY = ["--models", "MDTv2-Ti/2", "--input-size", "8", "--num-classes", "10", "--steps", "2", "--reps", "1",
        "--providers", "reference", "fused"]


def test_writes_the_table_with_a_row_per_provider(tmp_path):
    sample.main(TINY + ["--out", str(tmp_path)])
    data = json.loads((tmp_path / f"sample_{CPU}_fp32.json").read_text())
    assert [r["provider"] for r in data["rows"]] == ["reference", "fused"]
    assert data["rows"][0]["max_diff"] == 0 and data["rows"][1]["max_diff"] < 1e-4
    assert data["rows"][1]["samples_per_s"] > 0 and "vs reference" in (tmp_path / f"sample_{CPU}_fp32.md").read_text()


def test_samples_further_than_the_tolerance_fail_the_run(tmp_path, monkeypatch):
    real = sample.generate

    def off_by_one_percent(model, labels, **kw):  # a provider whose samples drift from the reference's
        x = real(model, labels, **kw)
        return x * 1.01 if sample.mk.get_backend() == "auto" else x
    monkeypatch.setattr(sample, "generate", off_by_one_percent)
    with pytest.raises(SystemExit, match="MDTv2-Ti/2 fused"):
        sample.main(TINY + ["--out", str(tmp_path)])
