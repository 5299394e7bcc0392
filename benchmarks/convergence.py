"""MDTv2 vs DiT convergence: does mask modeling reach a given sample quality in fewer steps, and sooner in time?

Trains DiT and MDTv2 of the same size with the same budget (data, steps, batch, optimizer, lr, EMA, seeds) through
`mdt train`, each run single-threaded in its own process, `--parallel` runs at a time (the longest first, so the
workers finish together). Every `--eval-every` steps the trainer samples the EMA model and scores the samples
with the data set's judge (mdt.metrics): the Frechet distance of a classifier's features to held-out real
images, and the share of class-conditional samples classified as their class. This script then averages the
seeds and reports, for each model, the first step at which it reaches the baseline's (first model's) final
quality, in steps and in time.

Time: a run's own wall-clock on a shared machine is unreliable, so time is steps x the median step time of
benchmarks.train_step measured on this machine for both models, interleaved, one thread each as the runs
(`--step-times FILE` reuses a train_step JSON instead); the runs' own training seconds are reported beside it.

Resumable: a finished run (its last checkpoint at --steps) is kept, a partial one continues from its newest
checkpoint (`mdt train --resume auto`; checkpoints every --eval-every steps), so a killed study is rerun with the
same command. `--fresh` trains everything again.

    python -m benchmarks.convergence --data mnist          # 64 tokens (32x32, patch 4), 2 models x 2 seeds
    python -m benchmarks.convergence --data digits         # 16 tokens (8x8, patch 2), 2 models x 3 seeds

Writes benchmarks/results/convergence_<data>.{md,json,png} and convergence_<data>_samples.png (the runs are kept
under --runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

METRICS = (("frechet", "Frechet distance (lower is better)", min), ("accuracy", "class accuracy", max))
# Per data set: the study's defaults. mnist runs at 64 tokens (patch 4): at 256 tokens (patch 2) DiT-Ti/2 gave no
# recognisable digit after 2,000 steps of batch 32 (FD 812, classifier accuracy 11.5%; 40 min of one core), so a
# 2-seed study to a quality worth comparing does not fit in 2 hours of a 2-core machine. 8,000 steps at 64 tokens:
# about 95 minutes there, two runs at a time.
DEFAULTS = {
    "digits": dict(models=["DiT-Ti/2", "MDTv2-Ti/2"], seeds=[0, 1, 2], steps=4000, eval_every=500, batch_size=64,
                   lr=2e-3, ema_decay=0.995, eval_samples=500, sampler="ddpm", sample_steps=50, cfg_scale=1.5),
    "mnist": dict(models=["DiT-Ti/4", "MDTv2-Ti/4"], seeds=[0, 1], steps=8000, eval_every=500, batch_size=32,
                  lr=2e-3, ema_decay=0.995, eval_samples=500, sampler="ddim", sample_steps=25, cfg_scale=1.0),
}


def run_dir(args, model: str, seed: int) -> str:
    return os.path.join(args.runs, f"{model.replace('/', '_')}_seed{seed}")


def finished(out: str, steps: int) -> bool:
    from mdt import checkpoint as ckpt

    return os.path.exists(os.path.join(out, "eval.json")) and os.path.exists(ckpt.checkpoint_path(out, steps))


def run_one(model: str, seed: int, args) -> str:
    """Trains one (model, seed) with `mdt train` (or continues it); returns its run folder."""
    out = run_dir(args, model, seed)
    if finished(out, args.steps):
        return out
    cmd = [sys.executable, "-m", "mdt.cli", "train", "--model", model, "--data", args.data, "--seed", str(seed),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--ema-decay", str(args.ema_decay), "--eval-every", str(args.eval_every), "--eval-samples",
           str(args.eval_samples), "--sampler", args.sampler, "--sample-steps", str(args.sample_steps),
           "--cfg-scale", str(args.cfg_scale), "--log-every", str(args.eval_every // 4 or 1),
           "--ckpt-every", str(args.eval_every), "--keep-last", "2", "--threads", "1", "--no-progress",
           "--out", out, "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{model} seed {seed} failed:\n{r.stderr[-2000:]}")
    print(f"  {model} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def read_curve(out: str) -> dict:
    """{"step", "train_seconds", "frechet", "accuracy"} lists of a run's evaluations (the last one kept per step)."""
    rows = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        r = json.loads(line) if line.strip() else {}
        if "eval" in r:
            rows[r["step"]] = r
    evals = [rows[s] for s in sorted(rows)]
    curve = {"step": [r["step"] for r in evals], "train_seconds": [r["train_seconds"] for r in evals]}
    for key, _, _ in METRICS:
        curve[key] = [r["eval"][key] for r in evals]
    return curve


def first_reach(values, target, better) -> int | None:
    """Index of the first value at least as good as target (better = min: <=, max: >=), or None."""
    for i, v in enumerate(values):
        if v is not None and ((v <= target) if better is min else (v >= target)):
            return i
    return None


def summarize(curves: dict, models, step_ms: dict) -> dict:
    """Seed-averaged curves per model, the time axis (steps x median step time), the baseline's final quality,
    and when each model first reaches it."""
    summary = {}
    for model in models:
        runs = curves[model]
        steps = runs[0]["step"]
        summary[model] = {
            "step": steps, "seeds": len(runs), "step_ms": step_ms.get(model),
            "time_s": [s * step_ms[model] / 1e3 for s in steps] if model in step_ms else None,
            "train_seconds": np.mean([r["train_seconds"] for r in runs], axis=0).tolist(),
            "mean": {k: np.mean([r[k] for r in runs], axis=0).tolist() for k, _, _ in METRICS},
            "std": {k: np.std([r[k] for r in runs], axis=0).tolist() for k, _, _ in METRICS},
            "min": {k: np.min([r[k] for r in runs], axis=0).tolist() for k, _, _ in METRICS},
            "max": {k: np.max([r[k] for r in runs], axis=0).tolist() for k, _, _ in METRICS}}
    for key, _, better in METRICS:
        target = summary[models[0]]["mean"][key][-1]
        for model in models:
            s = summary[model]
            i = first_reach(s["mean"][key], target, better)
            s.setdefault("reach", {})[key] = {
                "target": target, "step": s["step"][i] if i is not None else None,
                "time_s": s["time_s"][i] if i is not None and s["time_s"] else None,
                "train_seconds": s["train_seconds"][i] if i is not None else None}
    return summary


def measure_step_ms(args) -> dict:
    """Median ms per step of each model: benchmarks.train_step, both models interleaved over 3 rounds, one
    thread each (as the runs), on the study's batch and data shape."""
    from mdt.data import open_dataset

    data = open_dataset(args.data)
    out = os.path.join(args.runs, "train_step")
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--models", *args.models, "--batch", str(args.batch_size),
           "--input-size", str(data.input_size), "--in-channels", str(data.in_channels), "--num-classes",
           str(data.num_classes), "--modes", "fused", "--compile", "off", "--threads", "1", "--rounds", "3",
           "--iters", "10", "--out", out]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"benchmarks.train_step failed:\n{r.stderr[-2000:]}")
    return read_step_ms(next(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".json")))


def read_step_ms(path: str) -> dict:
    with open(path) as f:
        rows = json.load(f)["rows"]
    return {r["model"]: r["ms"] for r in rows if r["mode"] == "fused" and not r["compiled"]}


def plot(summary: dict, models, path: str, data: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkeys = [("step", "training step")]
    if all(summary[m]["time_s"] for m in models):
        xkeys.append(("time_s", "time (s): steps x median step time, 1 thread"))
    fig, axes = plt.subplots(2, len(xkeys), figsize=(5 * len(xkeys), 7), squeeze=False)
    for row, (key, label, _) in enumerate(METRICS):
        for col, (xkey, xlabel) in enumerate(xkeys):
            ax = axes[row, col]
            for model in models:
                s = summary[model]
                x, m = np.array(s[xkey]), np.array(s["mean"][key])
                ax.plot(x, m, marker="o", ms=3, label=f"{model} ({s['seeds']} seeds)")
                ax.fill_between(x, s["min"][key], s["max"][key], alpha=0.2)
            ax.axhline(summary[models[0]]["mean"][key][-1], color="gray", ls="--", lw=0.8, label=f"{models[0]} final")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            if key == "frechet":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"EMA sample quality on {data}, same budget (band: min..max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grids(args, path: str) -> None:
    """The final samples.png of each model's first seed, side by side, titled."""
    from PIL import Image, ImageDraw

    grids = [(m, Image.open(os.path.join(run_dir(args, m, args.seeds[0]), "samples.png")).convert("RGB"))
             for m in args.models]
    pad, title = 10, 24
    w = sum(g.width for _, g in grids) + pad * (len(grids) + 1)
    h = max(g.height for _, g in grids) + title + pad
    canvas = Image.new("RGB", (w, h), "white")
    x = pad
    for model, g in grids:
        ImageDraw.Draw(canvas).text((x, 6), f"{model}, step {args.steps}, seed {args.seeds[0]}", fill="black")
        canvas.paste(g, (x, title))
        x += g.width + pad
    canvas.save(path)


def _cell(v, fmt) -> str:
    return "-" if v is None else fmt.format(v)


def markdown(summary: dict, models, args, machine: str, wall: float) -> str:
    base, last = models[0], models[-1]
    lines = [f"# {last} vs {base} convergence on {args.data} ({machine})", "",
             f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.steps} steps, global batch "
             f"{args.batch_size}, Adan lr {args.lr}, EMA {args.ema_decay}; every {args.eval_every} steps "
             f"{args.eval_samples} EMA samples ({args.sampler} {args.sample_steps} steps, CFG {args.cfg_scale}) judged "
             f"by `mdt eval`'s {args.data} classifier (FD of its features to the held-out images; class accuracy). "
             f"Each run single-threaded, {args.parallel} at a time; whole study {wall / 60:.1f} min of wall-clock.",
             "", "Time = steps x the median step time of `benchmarks.train_step` (both models interleaved, 3 rounds, "
             "1 thread): " + ", ".join(f"{m} {summary[m]['step_ms']:.0f} ms" for m in models
                                       if summary[m]["step_ms"]) + ". Cells: seed mean ± std.", "",
             "| step | " + " | ".join(f"{m} FD | {m} acc" for m in models) + " |",
             "|---|" + "---|---|" * len(models)]
    for i, step in enumerate(summary[base]["step"]):
        cells = []
        for m in models:
            s = summary[m]
            cells += [f"{s['mean']['frechet'][i]:.1f} ± {s['std']['frechet'][i]:.1f}",
                      f"{100 * s['mean']['accuracy'][i]:.1f}% ± {100 * s['std']['accuracy'][i]:.1f}"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", f"## When each model first reaches {base}'s final quality (seed means)", "",
              "| metric | target | " + " | ".join(f"{m} step | {m} time (s)" for m in models)
              + " | factor in steps | factor in time |", "|---|---|" + "---|---|" * len(models) + "---|---|"]
    for key, label, _ in METRICS:
        reach = [summary[m]["reach"][key] for m in models]
        cells = []
        for r in reach:
            cells += [_cell(r["step"], "{}") if r["step"] is not None else "not reached", _cell(r["time_s"], "{:.0f}")]
        f_steps = reach[0]["step"] / reach[-1]["step"] if reach[-1]["step"] else None
        f_time = reach[0]["time_s"] / reach[-1]["time_s"] if reach[-1]["time_s"] else None
        tgt = f"{reach[0]['target']:.1f}" if key == "frechet" else f"{100 * reach[0]['target']:.1f}%"
        lines.append(f"| {label} | {tgt} | " + " | ".join(cells) + f" | {_cell(f_steps, '{:.2f}x')} | "
                     f"{_cell(f_time, '{:.2f}x')} |")
    lines += ["", "Raw time (the runs' own training seconds, seed mean, at the step each first reaches the target; "
              "runs shared the machine): " + "; ".join(
                  f"{m} {_cell(summary[m]['reach']['frechet']['train_seconds'], '{:.0f} s')} (FD)" for m in models), ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=sorted(DEFAULTS))
    p.add_argument("--models", nargs="+", help="baseline first")
    p.add_argument("--seeds", nargs="+", type=int)
    for name, kind in (("steps", int), ("eval-every", int), ("batch-size", int), ("lr", float), ("ema-decay", float),
                       ("eval-samples", int), ("sample-steps", int), ("cfg-scale", float)):
        p.add_argument(f"--{name}", type=kind)
    p.add_argument("--sampler", choices=("ddpm", "ddim", "dpm++"))
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="runs at a time (1 thread each)")
    p.add_argument("--runs", default=None, help="folder of the training runs (default runs/convergence_<data>)")
    p.add_argument("--step-times", default=None, help="a benchmarks.train_step JSON to take the step times from")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--fresh", action="store_true", help="delete earlier runs and train them again")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.data].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.runs = args.runs or f"runs/convergence_{args.data}"
    if args.steps % args.eval_every:
        p.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fresh:
        shutil.rmtree(args.runs, ignore_errors=True)
    t0 = time.perf_counter()
    # The costliest model first: with a worker per seed's pair, the workers finish together.
    jobs = [(m, s) for m in reversed(args.models) for s in args.seeds]
    print(f"{len(jobs)} runs, {args.parallel} at a time", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        outs = dict(zip(jobs, pool.map(lambda job: run_one(*job, args), jobs)))
    wall = time.perf_counter() - t0
    step_ms = read_step_ms(args.step_times) if args.step_times else measure_step_ms(args)
    curves = {m: [read_curve(outs[m, s]) for s in args.seeds] for m in args.models}
    summary = summarize(curves, args.models, step_ms)
    import torch

    from ._harness import device_name

    machine = f"{device_name(torch.device('cpu')).split(',')[0]}, {os.cpu_count()} cores"
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"convergence_{args.data}")
    plot(summary, args.models, stem + ".png", args.data)
    sample_grids(args, stem + "_samples.png")
    md = markdown(summary, args.models, args, machine, wall)
    with open(stem + ".md", "w") as f:
        f.write(md + f"\n![quality vs steps and time](convergence_{args.data}.png)\n\n"
                f"![final samples](convergence_{args.data}_samples.png)\n")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "config": vars(args), "wall_seconds": wall, "step_ms": step_ms,
                   "summary": summary, "runs": curves}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
