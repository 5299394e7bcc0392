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

import copy
import statistics

import torch

from benchmarks._harness import write_results
from benchmarks.train_step import parse_step_args, run_config, step_head, step_meta, step_parser


def markdown(meta: dict, rows: list[dict]) -> str:
    c = meta["config"]
    lines = step_head(
        meta, "Activation checkpointing",
        f"One `mdt train` step (fused ops, eager) on a batch of {c['batch']} "
        f"latents {c['in_channels']}x{c['input_size']}x{c['input_size']}, {c['num_classes']} classes; median of "
        f"{c['iters']} steps in each of {c['rounds']} rounds alternating the settings (per-round medians in "
        f"parentheses). Peak: {meta['memory']}.")
    lines += ["| model | --grad-checkpoint | ms/step | peak MB | time vs off | memory vs off |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        off = next(o for o in rows if o["model"] == r["model"] and not o["grad_checkpoint"])
        lines.append(f"| {r['model']} | {'on' if r['grad_checkpoint'] else 'off'} | {r['ms']:.0f} "
                     f"({', '.join(f'{x:.0f}' for x in r['round_ms'])}) | {r['peak_mb']:.0f} | "
                     f"{r['ms'] / off['ms']:.2f}x | {r['peak_mb'] / off['peak_mb']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = step_parser(__doc__, ["MDTv2-S/2"], batch=32, warmup=2, rounds=2)
    p.add_argument("--iters", type=int, default=3, help="timed steps per round")
    args = parse_step_args(p, argv, ("warmup", "iters", "rounds"))
    device = torch.device(args.device)
    meta = step_meta(device, args, vars(args))
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
