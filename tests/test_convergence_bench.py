"""benchmarks.convergence end to end at a toy size: runs trained, resumed and kept, the reach table, the files."""

import json

from benchmarks import convergence

ARGS = ["--data", "digits", "--seeds", "0", "--steps", "4", "--eval-every", "2", "--batch-size", "16",
        "--eval-samples", "10", "--sample-steps", "2", "--parallel", "2"]


def test_study_writes_tables_plots_and_grids_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MDT_CACHE", str(tmp_path / "cache"))
    step_times = tmp_path / "ts.json"
    step_times.write_text(json.dumps({"rows": [
        {"model": "DiT-Ti/2", "mode": "fused", "compiled": False, "ms": 10.0},
        {"model": "MDTv2-Ti/2", "mode": "fused", "compiled": False, "ms": 20.0}]}))
    argv = ARGS + ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--step-times", str(step_times)]
    assert convergence.main(argv) == 0
    result = json.loads((tmp_path / "out" / "convergence_digits.json").read_text())
    s = result["summary"]
    assert s["DiT-Ti/2"]["step"] == s["MDTv2-Ti/2"]["step"] == [2, 4]
    assert s["MDTv2-Ti/2"]["time_s"] == [0.04, 0.08]  # steps x 20 ms
    reach = s["DiT-Ti/2"]["reach"]["frechet"]
    assert reach["step"] == 4 and reach["target"] == s["DiT-Ti/2"]["mean"]["frechet"][-1]  # the baseline's final
    for suffix in (".md", ".png", "_samples.png"):
        assert (tmp_path / "out" / f"convergence_digits{suffix}").stat().st_size > 0
    md = (tmp_path / "out" / "convergence_digits.md").read_text()
    assert "factor in time" in md and "DiT-Ti/2 10 ms" in md
    # A finished study is not trained again; a longer one continues the runs from their checkpoints.
    metrics = tmp_path / "runs" / "MDTv2-Ti_2_seed0" / "metrics.jsonl"
    before = metrics.read_text()
    assert convergence.main(argv) == 0 and metrics.read_text() == before
    assert convergence.main([a if a != "4" else "6" for a in argv]) == 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "eval" in line]
    assert steps == [2, 4, 6]
