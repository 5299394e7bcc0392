"""benchmarks.train_step on tiny models: it writes its rows, and what it times is a correct training step
(fused and unfused agree on the losses) whose profile shows which ops ran."""

import argparse
import json
import math

import pytest
import torch

import benchmarks.train_step as ts
import mdt_kernels as mk
from benchmarks._harness import device_tag
from benchmarks.train_step import add_comparisons, check_step, main

CPU = device_tag(torch.device("cpu"))  # e.g. cpu-avx2: the capability the kernels run

TINY = ["--models", "MDTv2-Ti/2", "DiT-Ti/2", "--input-size", "8", "--in-channels", "1", "--num-classes", "10",
        "--batch", "4", "--iters", "2", "--rounds", "2", "--warmup", "1", "--compile", "off", "--profile",
        "--device", "cpu"]


@pytest.mark.skipif("cpu" not in mk.available_backends("cpu"), reason="mdt_kernels._C is not built")
def test_tiny_train_step_benchmark(tmp_path):
    threads = torch.get_num_threads()
    try:
        main(TINY + ["--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / f"train_step_{CPU}_fp32.json").read_text())
    assert (tmp_path / f"train_step_{CPU}_fp32.md").exists()
    rows = {(r["model"], r["mode"]): r for r in data["rows"]}
    assert set(rows) == {(m, mode) for m in ("MDTv2-Ti/2", "DiT-Ti/2") for mode in ("fused", "unfused")}
    assert data["meta"]["warnings"] == []
    for (_, mode), r in rows.items():
        assert not r["compiled"] and r["params"] > 0
        assert r["ms"] > 0 and len(r["times_ms"]) == 4 and all(t > 0 for t in r["times_ms"])  # 2 rounds x 2
        assert r["rounds"] == 2 and len(r["round_ms"]) == 2
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
        ours = [o["name"] for o in r["profile"]["top"] if o["name"].startswith("mdt_kernels::")]
        if mode == "fused":
            assert ours and r["profile"]["categories"]["mdt_kernels ops"]["ms"] > 0
            assert r["speedup_vs_unfused"] > 0
        else:
            assert not ours and not r["profile"]["mdt_kernels_ops"]
            assert r["profile"]["categories"]["mdt_kernels ops"]["ms"] == 0
    for model in ("MDTv2-Ti/2", "DiT-Ti/2"):  # same seeds: the same batch, timesteps, noise and masks
        fused, unfused = rows[(model, "fused")], rows[(model, "unfused")]
        assert fused["loss_first"] == pytest.approx(unfused["loss_first"], rel=1e-5)
        assert fused["loss_last"] == pytest.approx(unfused["loss_last"], rel=1e-4)  # after 2 Adan + EMA steps


@pytest.mark.skipif("cpu" not in mk.available_backends("cpu"), reason="mdt_kernels._C is not built")
def test_tiny_compiled_bf16_fused_step(tmp_path):
    """The configuration of the GPU acceptance run (bf16 autocast, torch.compile, fused kernels and fused
    Adan), on CPU: compiled backward returns the (D, 1, 2, 2) patch-embedding gradient with other strides on
    its size-1 dimension, which the fused Adan step once refused."""
    threads = torch.get_num_threads()
    argv = ["--models", "MDTv2-Ti/2", "--input-size", "8", "--in-channels", "1", "--num-classes", "10", "--batch", "4",
            "--iters", "1", "--warmup", "3", "--compile", "on", "--modes", "fused", "--precision", "bf16",
            "--device", "cpu", "--threads", "1", "--out", str(tmp_path)]
    try:
        main(argv)
    finally:
        torch.set_num_threads(threads)
    (row,) = json.loads((tmp_path / f"train_step_{CPU}_bf16.json").read_text())["rows"]
    assert row["compiled"] and row["mode"] == "fused" and math.isfinite(row["loss_last"])


@pytest.mark.skipif("cpu" not in mk.available_backends("cpu"), reason="mdt_kernels._C is not built")
def test_a_run_cut_off_keeps_the_configurations_it_measured(tmp_path, monkeypatch):
    real = ts.run_config

    def cut_off_at_dit(name, *args, **kw):  # as if the time limit struck during the second model
        if name == "DiT-Ti/2":
            raise KeyboardInterrupt
        return real(name, *args, **kw)

    monkeypatch.setattr(ts, "run_config", cut_off_at_dit)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            main(TINY + ["--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / f"train_step_{CPU}_fp32.json").read_text())["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {("MDTv2-Ti/2", "fused"), ("MDTv2-Ti/2", "unfused")}
    assert "MDTv2-Ti/2" in (tmp_path / f"train_step_{CPU}_fp32.md").read_text()


def test_check_catches_a_wrong_fused_op(monkeypatch):
    real = mk.gated_residual

    def wrong(x, gate, y):  # a "kernel" that forgets the sign of the gate when a fused backend is chosen
        return real(x, gate if mk.get_backend() == "reference" else gate.abs(), y)

    monkeypatch.setattr(mk, "gated_residual", wrong)
    args = argparse.Namespace(batch=4, precision="fp32", seed=0, input_size=8, in_channels=1, num_classes=10)
    check = check_step("DiT-Ti/2", args, torch.device("cpu"))
    assert check["grad_rel_err"] > 1e-4
    assert "may be of a broken step" in add_comparisons([], {"DiT-Ti/2": check}, "fp32")[0]


def test_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--models", "MDTv2-Q/2"])
    assert "unknown model 'MDTv2-Q/2'; choose from" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--device", "cuda"])
        assert "no usable GPU" in capsys.readouterr().err
