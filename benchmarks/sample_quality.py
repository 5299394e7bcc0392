"""Sample quality against the number of model evaluations on the 8x8 digits: DDPM, DDIM, DPM-Solver++(2M).

Samples a digits checkpoint (the run of `make train` by default) with each sampler at each step count (one
model evaluation per step, CFG as `mdt train` evaluates), the same classes and seed for all, and scores the
samples with the digits metrics (mdt.metrics.digits_quality: Frechet distance of a digits classifier's
features to held-out real digits, and class accuracy). Every cell is the mean over --seeds.

    python -m benchmarks.sample_quality                                    # runs/digits, 10/25/50/250 steps
    python -m benchmarks.sample_quality --checkpoint /tmp/run --steps 10 25 --samples 200

Writes benchmarks/results/sample_quality_digits.{md,json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np
import torch

from mdt.checkpoint import load_model
from mdt.metrics import digits_quality
from mdt.sample import SAMPLERS, generate

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/digits", help="a digits training run or checkpoint")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 250])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--samples", type=int, default=500, help="samples per cell (classes balanced)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--skip", nargs="*", default=[], metavar="SAMPLER:STEPS",
                   help="cells not to run, e.g. ddim:250 dpm++:250 (left blank in the table)")
    p.add_argument("--out", default=os.path.join(RESULTS, "sample_quality_digits"))
    args = p.parse_args(argv)

    model, info = load_model(args.checkpoint, device="cpu")
    labels = torch.arange(args.samples) % info["num_classes"]
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            if f"{sampler}:{steps}" in args.skip:
                continue
            cells = []
            t0 = time.perf_counter()
            for seed in args.seeds:
                x = generate(model, labels, sampler=sampler, steps=steps, cfg_scale=args.cfg_scale, seed=seed,
                             clip_denoised=True, batch_size=args.samples)
                cells.append(digits_quality(x, labels))
            row = {"sampler": sampler, "steps": steps, "seconds": time.perf_counter() - t0,
                   "frechet": float(np.mean([c["frechet"] for c in cells])),
                   "frechet_std": float(np.std([c["frechet"] for c in cells])),
                   "accuracy": float(np.mean([c["accuracy"] for c in cells]))}
            rows.append(row)
            print(f"{sampler:>6} {steps:>4} steps: FD {row['frechet']:.3f} +- {row['frechet_std']:.3f}, "
                  f"accuracy {row['accuracy']:.3f} ({row['seconds']:.0f} s)", flush=True)
    meta = {"checkpoint": args.checkpoint, "source": info["source"], "model": info["model"],
            "samples": args.samples, "seeds": args.seeds, "cfg_scale": args.cfg_scale,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "threads": torch.get_num_threads()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(meta, rows, args))
    plot(rows, args, args.out + ".png")
    print(f"wrote {args.out}.md, .json and .png")


def markdown(meta, rows, args) -> str:
    by = {(r["sampler"], r["steps"]): r for r in rows}
    head = (f"# Sample quality vs model evaluations on the 8x8 digits\n\n{meta['model']} {meta['source']} of "
            f"{meta['checkpoint']}; {meta['samples']} EMA samples per cell (classes balanced), CFG "
            f"{meta['cfg_scale']}, seeds {meta['seeds']} (mean +- std); digits Frechet distance (lower is "
            f"better) and class accuracy; {meta['date']}, CPU, {meta['threads']} threads.\n\n")
    lines = ["| steps | " + " | ".join(f"{s} FD | {s} acc" for s in args.samplers) + " |",
             "|---|" + "---|---|" * len(args.samplers)]
    for steps in args.steps:
        cells = []
        for s in args.samplers:
            r = by.get((s, steps))
            cells.append("not run | " if r is None else
                         f"{r['frechet']:.2f} +- {r['frechet_std']:.2f} | {100 * r['accuracy']:.1f}%")
        lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    text = head + "\n".join(lines) + "\n"
    ref = by.get(("ddpm", max(args.steps)))
    if ref is not None:
        text += f"\nAgainst {max(args.steps)}-step DDPM (FD {ref['frechet']:.2f}):\n\n"
        for s in args.samplers:
            ratios = [f"{steps}: {by[(s, steps)]['frechet'] / ref['frechet']:.2f}x" for steps in args.steps
                      if (s, steps) in by]
            text += f"- {s}: " + ", ".join(ratios) + "\n"
    return text


def plot(rows, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for s in args.samplers:
        pts = sorted((r["steps"], r["frechet"], r["frechet_std"]) for r in rows if r["sampler"] == s)
        ax.errorbar([a for a, _, _ in pts], [b for _, b, _ in pts], yerr=[c for _, _, c in pts], marker="o",
                    label=s, capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(args.steps, [str(s) for s in args.steps])
    ax.set_xlabel("model evaluations")
    ax.set_ylabel("digits Frechet distance")
    ax.set_title("Sample quality vs steps (digits)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
