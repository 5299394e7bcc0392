"""Peak memory and step time of the training step with and without `--grad-checkpoint` (activation
checkpointing: each transformer block recomputed in the backward).

    python -m benchmarks.grad_checkpoint                        # MDTv2-S/2, batch 32, fp32, fused, eager
    python -m benchmarks.grad_checkpoint --models MDTv2-S/2 DiT-S/2 --batch 32 --rounds 2

Each configuration is the trainer's own step (benchmarks.train_step.run_config, a fresh model each); rounds
alternate with and without checkpointing. Peak memory: CPU, the peak resident set size during one extra step
over what was in use before the model was built (allocator caches included); CUDA, torch.cuda.max_memory_allocated.
Writes benchmarks/results/grad_checkpoint_<device>_<dtype>.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics

import torch

from benchmarks._harness import device_name, git_sha, write_results
from benchmarks.train_step import run_config
from mdt.train_step import PRECISIONS


def markdown(meta: dict, rows: list[dict]) -> str:
    c = meta["config"]
    lines = [f"# Activation checkpointing: {meta['device']} ({meta['dtype']})", "",
             f"torch {meta['torch']}, {meta['threads']} threads, commit {meta['commit']}, {meta['date']}, load average "
             f"at start {meta['load_avg']}. One `mdt train` step (fused ops, eager) on a batch of {c['batch']} "
             f"latents {c['in_channels']}x{c['input_size']}x{c['input_size']}, {c['num_classes']} classes; median of "
             f"{c['iters']} steps in each of {c['rounds']} rounds alternating the settings (per-round medians in "
             f"parentheses). Peak: {meta['memory']}.", "",
             "| model | --grad-checkpoint | ms/step | peak MB | time vs off | memory vs off |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        off = next(o for o in rows if o["model"] == r["model"] and not o["grad_checkpoint"])
        lines.append(f"| {r['model']} | {'on' if r['grad_checkpoint'] else 'off'} | {r['ms']:.0f} "
                     f"({', '.join(f'{x:.0f}' for x in r['round_ms'])}) | {r['peak_mb']:.0f} | "
                     f"{r['ms'] / off['ms']:.2f}x | {r['peak_mb'] / off['peak_mb']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["MDTv2-S/2"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory = ("torch.cuda.max_memory_allocated over the steps minus what was allocated before" if device.type == "cuda"
              else "peak resident set size during one extra step minus the RSS before the model was built")
    meta = dict(device=device_name(device), dtype=args.precision, threads=torch.get_num_threads(),
                torch=torch.__version__, commit=git_sha(), date=datetime.date.today().isoformat(),
                load_avg=round(os.getloadavg()[0], 2), memory=memory, config=vars(args))
    runs = {(m, ckpt): [] for m in args.models for ckpt in (False, True)}
    for _ in range(args.rounds):
        for m in args.models:
            for ckpt in (False, True):
                a = copy.copy(args)
                a.grad_checkpoint = ckpt
                runs[m, ckpt].append(run_config(m, "fused", False, a, device))
    rows = []
    for (m, ckpt), rs in runs.items():
        times = [t for r in rs for t in r["times_ms"]]
        rows.append(dict(model=m, grad_checkpoint=ckpt, ms=statistics.median(times), round_ms=[r["ms"] for r in rs],
                         peak_mb=max(r["peak_mb"] for r in rs), loss_first=rs[0]["loss_first"]))
    stem = write_results(args.out, "grad_checkpoint", device, meta, rows, markdown, quiet=True)
    print(markdown(meta, rows))
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
