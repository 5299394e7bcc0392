"""MDT vs DiT convergence on the 8x8 digits: does mask modeling reach a given sample quality in fewer steps?

Trains DiT and MDTv2 of the same size with the same budget (steps, batch, optimizer, lr, EMA, seeds) through
`mdt train`, each run single-threaded in its own process, `--parallel` runs at a time (so concurrent runs see
the same machine). Every `--eval-every` steps the trainer samples the EMA model (class-conditional, CFG) and
scores the samples with the digits metrics: class accuracy of a digits classifier and the Frechet distance of
its features to held-out real digits. This script then averages the seeds, plots quality against steps and
against training time, and reports the step (and time) at which each model first reaches DiT's final quality.

    python -m benchmarks.convergence                       # defaults below: 2 models x 3 seeds
    python -m benchmarks.convergence --seeds 0 --steps 2000 --eval-every 500   # a quick look

Writes benchmarks/results/convergence_digits.{md,json,png} (and the runs under --runs).
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

DEFAULT_MODELS = ("DiT-Ti/2", "MDTv2-Ti/2")
METRICS = (("frechet", "Frechet distance (lower is better)", min), ("accuracy", "class accuracy", max))


def run_one(model: str, seed: int, args) -> str:
    """Trains one (model, seed) with `mdt train`; returns its run folder (reused when already complete)."""
    out = os.path.join(args.runs, f"{model.replace('/', '_')}_seed{seed}")
    if os.path.exists(os.path.join(out, "eval.json")) and not args.fresh:
        return out
    if args.fresh:  # else `--resume auto` would find the finished run and only evaluate it again
        shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "mdt.cli", "train", "--model", model, "--data", "digits", "--seed", str(seed),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--ema-decay", str(args.ema_decay), "--eval-every", str(args.eval_every), "--eval-samples",
           str(args.eval_samples), "--sample-steps", str(args.sample_steps), "--cfg-scale", str(args.cfg_scale),
           "--log-every", str(args.eval_every), "--ckpt-every", str(args.steps), "--keep-last", "1",
           "--threads", "1", "--no-progress", "--out", out, "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{model} seed {seed} failed:\n{r.stderr[-2000:]}")
    print(f"  {model} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def read_curve(out: str) -> dict:
    """{"step": [...], "train_seconds": [...], "frechet": [...], "accuracy": [...]} of a run's evaluations."""
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]
    evals = [r for r in rows if "eval" in r]
    curve = {"step": [r["step"] for r in evals], "train_seconds": [r["train_seconds"] for r in evals]}
    for key, _, _ in METRICS:
        curve[key] = [r["eval"][key] for r in evals]
    return curve


def first_reach(steps, values, target, better) -> int | None:
    """Index of the first value at least as good as target (better = min: <=, max: >=), or None."""
    for i, v in enumerate(values):
        if (v <= target) if better is min else (v >= target):
            return i
    return None


def summarize(curves: dict, models) -> dict:
    """Seed-averaged curves per model, DiT's final quality, and when each model first reaches it."""
    summary = {}
    for model in models:
        runs = curves[model]
        steps = runs[0]["step"]
        mean = {k: np.mean([r[k] for r in runs], axis=0).tolist() for k, _, _ in METRICS}
        std = {k: np.std([r[k] for r in runs], axis=0).tolist() for k, _, _ in METRICS}
        secs = np.mean([r["train_seconds"] for r in runs], axis=0).tolist()
        summary[model] = {"step": steps, "train_seconds": secs, "mean": mean, "std": std, "seeds": len(runs)}
    baseline = models[0]
    for key, _, better in METRICS:
        target = summary[baseline]["mean"][key][-1]
        for model in models:
            s = summary[model]
            i = first_reach(s["step"], s["mean"][key], target, better)
            s.setdefault("reach", {})[key] = {
                "target": target, "step": s["step"][i] if i is not None else None,
                "train_seconds": s["train_seconds"][i] if i is not None else None}
    return summary


def plot(summary: dict, models, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, (key, label, _) in enumerate(METRICS):
        for col, xkey in enumerate(("step", "train_seconds")):
            ax = axes[row, col]
            for model in models:
                s = summary[model]
                x, m, sd = np.array(s[xkey]), np.array(s["mean"][key]), np.array(s["std"][key])
                ax.plot(x, m, marker="o", ms=3, label=f"{model} ({s['seeds']} seeds)")
                ax.fill_between(x, m - sd, m + sd, alpha=0.2)
            ax.axhline(summary[models[0]]["mean"][key][-1], color="gray", ls="--", lw=0.8,
                       label=f"{models[0]} final")
            ax.set_xlabel("training step" if xkey == "step" else "training time (s, 1 thread per run)")
            ax.set_ylabel(label)
            if key == "frechet":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("EMA sample quality on the 8x8 digits, same budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict, models, args, machine: str, wall: float) -> str:
    base = models[0]
    lines = [f"# MDT vs DiT convergence on the 8x8 digits ({machine})", "",
             f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), {args.steps} steps, global batch "
             f"{args.batch_size}, Adan lr {args.lr}, EMA {args.ema_decay}, evaluation every {args.eval_every} "
             f"steps: {args.eval_samples} EMA samples ({args.sample_steps} DDPM steps, CFG {args.cfg_scale}). "
             f"Each run single-threaded, {args.parallel} at a time; whole study {wall / 60:.1f} min.", "",
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
              "| metric | target | " + " | ".join(f"{m} step | {m} time (s)" for m in models) + " | step factor |",
              "|---|---|" + "---|---|" * len(models) + "---|"]
    for key, label, _ in METRICS:
        reach = [summary[m]["reach"][key] for m in models]
        target = reach[0]["target"]
        cells = []
        for r in reach:
            cells += [str(r["step"]) if r["step"] is not None else "not reached",
                      f"{r['train_seconds']:.0f}" if r["train_seconds"] is not None else "-"]
        factor = (f"{reach[0]['step'] / reach[-1]['step']:.2f}x" if reach[-1]["step"] else "-")
        tgt = f"{target:.1f}" if key == "frechet" else f"{100 * target:.1f}%"
        lines.append(f"| {label} | {tgt} | " + " | ".join(cells) + f" | {factor} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="baseline first")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="runs at a time (1 thread each)")
    p.add_argument("--runs", default="runs/convergence", help="folder of the training runs")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--fresh", action="store_true", help="delete earlier runs and train them again")
    args = p.parse_args(argv)
    if args.steps % args.eval_every:
        p.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")

    t0 = time.perf_counter()
    jobs = [(m, s) for s in args.seeds for m in args.models]
    print(f"{len(jobs)} runs, {args.parallel} at a time", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        outs = list(pool.map(lambda job: run_one(*job, args), jobs))
    wall = time.perf_counter() - t0
    curves = {m: [] for m in args.models}
    for (m, _), out in zip(jobs, outs):
        curves[m].append(read_curve(out))
    summary = summarize(curves, args.models)
    import torch

    from ._harness import device_name

    machine = f"{device_name(torch.device('cpu')).split(',')[0]}, {os.cpu_count()} cores"
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "convergence_digits")
    plot(summary, args.models, stem + ".png")
    md = markdown(summary, args.models, args, machine, wall)
    with open(stem + ".md", "w") as f:
        f.write(md + "\n![quality vs steps and time](convergence_digits.png)\n")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "config": vars(args), "wall_seconds": wall, "summary": summary,
                   "runs": {m: curves[m] for m in args.models}}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
