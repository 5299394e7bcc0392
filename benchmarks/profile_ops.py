"""Per-op profiling: median time of the eager reference, torch.compile(reference), the MDT-style
baseline and each runnable backend, speedups, and achieved GB/s against measured copy bandwidth.

    python -m benchmarks.profile_ops                      # every op, S/2 and XL/2, fwd/bwd/fwd+bwd, fp32
    python -m benchmarks.profile_ops --ops gather_tokens --modes fwd+bwd --dtype bf16

A row's providers are timed round-robin (interleaved_times), and each time is the median with its spread (half
the interquartile range). On a CPU, malloc keeps freed memory by default (--allocator heap): with glibc's
defaults an op's fresh outputs are new pages on some calls and runs and not others, which moved fwd+bwd rows 2-4x
between runs; --allocator system times that too, and every row records the page faults per call.

Rows are merged into benchmarks/results/ops_<device>_<dtype>.{json,md} (a row is keyed by op, shape
and mode), so profiling one op keeps the others' latest rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil

import torch

from benchmarks import cases as cases_pkg
from benchmarks._harness import (
    MODES,
    SHAPES,
    interleaved_times,
    keep_heap,
    results_stem,
    run_meta,
    run_parser,
    split_choices,
    table_head,
    write_results,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FUSED = ("cpu", "cuda", "triton")
REFS = ("eager", "compile", "baseline")


def _cell(r: dict, k: str) -> str:
    if k not in r["ms"]:
        return "-"
    spread = r.get("spread", {}).get(k)
    return f"{r['ms'][k]:.3f}" + (f" ±{100 * spread:.0f}%" if spread is not None else "")


def _row(r: dict) -> str:
    t, best = r["ms"], r["best"]
    cells = [_cell(r, k) for k in REFS + FUSED]
    ratios = [f"{t[k] / t[best]:.2f}x" if k in t and best else "-" for k in REFS]
    return (f"| {r['op']} | {r['shape']} | {r['mode']} | " + " | ".join(cells) + f" | {best or '-'} | "
            + " | ".join(ratios) + f" | {r['gbps']:.1f} | {r['pct_copy']:.0f}% | "
            + (f"{r['faults'][best]:.0f}" if best and "faults" in r else "-") + " |")


def markdown(meta: dict, rows: list[dict]) -> str:
    about = (f"Times are medians in ms of calls interleaved across providers, ± half their interquartile range; "
             f"malloc: {meta.get('allocator', 'system')}. Speedups, GB/s and page faults are of the fastest fused "
             "backend. GB/s counts the minimal bytes the mode must move; % is of the copy bandwidth.")
    lines = table_head(f"Kernel profile ({meta['dtype']})", meta, about,
                       ["op", "shape", "mode", *REFS, *FUSED, "best", "vs eager", "vs compile", "vs baseline", "GB/s",
                        "% copy", "page faults/call"])
    lines += [_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line (benchmarks/gpu_session.sh is checked against it by the tests)."""
    p = run_parser(__doc__, DTYPES, SHAPES, min_time=0.5)
    p.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {MODES}")
    p.add_argument("--allocator", default="heap", choices=("heap", "system"),
                   help="CPU: heap keeps freed memory in malloc's heap (warm pages each call); system: glibc's "
                        "defaults")
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    shapes = split_choices(p, args.shapes, SHAPES, "shape")
    modes = split_choices(p, args.modes, MODES, "mode")
    # A case module benchmarks one op, named as the module, or the ops it lists in OPS (an op family).
    modules = {m.name: importlib.import_module(f"benchmarks.cases.{m.name}")
               for m in pkgutil.iter_modules(cases_pkg.__path__)}
    names = [op for name, mod in modules.items() for op in getattr(mod, "OPS", (name,))]
    ops = split_choices(p, args.ops, names, "op")

    meta = run_meta(device, args.dtype)
    meta["allocator"] = "system"
    if device.type == "cpu" and args.allocator == "heap" and keep_heap():
        meta["allocator"] = "heap kept (no mmap, no trim)"
    bw = meta["copy_gbps"]
    new_rows = []
    for name, mod in modules.items():
        wanted = [op for op in getattr(mod, "OPS", (name,)) if not ops or op in ops]
        if not wanted:
            continue
        family = {"ops": wanted} if hasattr(mod, "OPS") else {}
        for case in mod.cases(device, dtype, shapes, modes, **family):
            timings = interleaved_times(case.providers, device, min_time=args.min_time)
            ms = {k: 1e3 * t.median for k, t in timings.items()}
            fused = [k for k in FUSED if k in ms]
            best = min(fused, key=ms.get) if fused else None
            gbps = case.nbytes / (ms[best] / 1e3) / 1e9 if best else 0.0
            row = dict(op=case.op, shape=case.shape, mode=case.mode, ms=ms, best=best, gbps=gbps,
                       pct_copy=100 * gbps / bw, spread={k: t.spread for k, t in timings.items()},
                       faults={k: t.faults_per_call for k, t in timings.items()})
            new_rows.append(row)
            print(markdown(meta, [row]).splitlines()[-1], flush=True)
        stem = merge_results(args.out, device, meta, new_rows)  # a run cut off keeps the ops it measured
    print(f"wrote {stem}.md and .json")


def merge_results(out: str, device: torch.device, meta: dict, new_rows: list[dict]) -> str:
    """Merges new_rows into the table in out (a row replaces the one with its (op, shape, mode)); returns
    the table's path without extension."""
    old = []
    path = results_stem(out, "ops", device, meta) + ".json"
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)["rows"]
    key = lambda r: (r["op"], r["shape"], r["mode"])  # noqa: E731
    fresh = {key(r) for r in new_rows}
    rows = [r for r in old if key(r) not in fresh] + new_rows
    order = list(SHAPES)  # a row's shape is "S/2 B=32 N=256 D=384": order by its first word

    def sort_key(r):
        size = r["shape"].split()[0]
        return r["op"], order.index(size) if size in order else len(order), MODES.index(r["mode"])

    rows.sort(key=sort_key)
    return write_results(out, "ops", device, meta, rows, markdown, quiet=True)


if __name__ == "__main__":
    main()
