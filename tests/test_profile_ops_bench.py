"""benchmarks.profile_ops writes its table, merges rows into an existing one, and keeps what it measured when
a run is cut off (a GPU command's time limit)."""

import importlib
import json

import pytest
import torch

import mdt_kernels as mk
from benchmarks._harness import device_tag
from benchmarks.profile_ops import main

CPU = device_tag(torch.device("cpu"))  # e.g. cpu-avx2: the capability the kernels run

ARGS = ["--shapes", "S/2", "--modes", "fwd", "--min-time", "0.01", "--device", "cpu"]


@pytest.mark.skipif("cpu" not in mk.available_backends("cpu"), reason="mdt_kernels._C is not built")
def test_rows_are_merged_and_kept_when_cut_off(tmp_path, monkeypatch):
    main(ARGS + ["--ops", "gated_residual", "--out", str(tmp_path)])
    table = tmp_path / f"ops_{CPU}_fp32.json"
    (row,) = json.loads(table.read_text())["rows"]
    assert row["op"] == "gated_residual" and row["shape"].startswith("S/2") and row["mode"] == "fwd"
    assert row["best"] == "cpu" and row["ms"]["cpu"] > 0 and row["ms"]["eager"] > 0 and row["gbps"] > 0
    assert set(row["spread"]) == set(row["faults"]) == set(row["ms"])
    assert "±" in (tmp_path / f"ops_{CPU}_fp32.md").read_text()

    def cut_off(*args, **kw):  # as if the time limit struck while the second op was being measured
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("benchmarks.cases.unmask_tokens"), "cases", cut_off)
    with pytest.raises(KeyboardInterrupt):
        main(ARGS + ["--ops", "gather_tokens,unmask_tokens", "--out", str(tmp_path)])
    ops = sorted(r["op"] for r in json.loads(table.read_text())["rows"])
    assert ops == ["gated_residual", "gather_tokens"]  # the old row merged, the finished op kept
    assert "gather_tokens" in (tmp_path / f"ops_{CPU}_fp32.md").read_text()
