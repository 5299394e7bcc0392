"""Per-op profiling: median time of the eager reference, torch.compile(reference), the MDT-style
baseline and each runnable backend, speedups, and achieved GB/s against measured copy bandwidth.

    python -m benchmarks.profile_ops                      # every op, S/2 and XL/2, fwd/bwd/fwd+bwd, fp32
    python -m benchmarks.profile_ops --ops gather_tokens --modes fwd+bwd --dtype bf16

Rows are merged into benchmarks/results/ops_<device>_<dtype>.{json,md} (a row is keyed by op, shape
and mode), so profiling one op keeps the others' latest rows.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess

import torch

from benchmarks import cases as cases_pkg
from benchmarks._harness import MODES, SHAPES, copy_bandwidth, median_time, results_stem, write_results

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FUSED = ("cpu", "cuda", "triton")
REFS = ("eager", "compile", "baseline")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _row(r: dict) -> str:
    t, best = r["ms"], r["best"]
    cells = [f"{t[k]:.3f}" if k in t else "-" for k in REFS + FUSED]
    ratios = [f"{t[k] / t[best]:.2f}x" if k in t and best else "-" for k in REFS]
    return (f"| {r['op']} | {r['shape']} | {r['mode']} | " + " | ".join(cells) + f" | {best or '-'} | "
            + " | ".join(ratios) + f" | {r['gbps']:.1f} | {r['pct_copy']:.0f}% |")


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# Kernel profile: {meta['device']} ({meta['dtype']})",
        "",
        f"torch {meta['torch']}, measured copy bandwidth {meta['copy_gbps']:.1f} GB/s, commit {meta['commit']}, "
        f"{meta['date']}, load average at start {meta.get('load_avg', '?')}. Times are medians in ms. "
        "Speedups are of the fastest fused backend. GB/s counts the "
        "minimal bytes the mode must move; % is of the copy bandwidth.",
        "",
        "| op | shape | mode | eager | compile | baseline | cpu | cuda | triton | best | vs eager | vs compile "
        "| vs baseline | GB/s | % copy |",
        "|" + "---|" * 15,
    ]
    lines += [_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line (benchmarks/gpu_session.sh is checked against it by the tests)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {MODES}")
    p.add_argument("--dtype", default="fp32", choices=DTYPES)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per provider")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    shapes = [s for s in args.shapes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    unknown = [s for s in shapes if s not in SHAPES] + [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown shape or mode: {unknown}")
    ops = [o for o in args.ops.split(",") if o]
    # A case module benchmarks one op, named as the module, or the ops it lists in OPS (an op family).
    modules = {m.name: importlib.import_module(f"benchmarks.cases.{m.name}")
               for m in pkgutil.iter_modules(cases_pkg.__path__)}
    names = [op for name, mod in modules.items() for op in getattr(mod, "OPS", (name,))]
    if any(o not in names for o in ops):
        p.error(f"unknown op in {ops}; known: {names}")

    load = os.getloadavg()[0]
    if device.type == "cpu" and load > 0.5:
        # Another busy process steals a core from the OpenMP threads, and every parallel region then
        # waits for a scheduler tick: CPU timings are meaningless until the machine is idle.
        print(f"warning: load average {load:.2f}; CPU timings on a busy machine are not representative")
    bw = copy_bandwidth(device)
    meta = dict(device=device_name(device), dtype=args.dtype, torch=torch.__version__, copy_gbps=bw,
                commit=git_sha(), date=datetime.date.today().isoformat(), load_avg=round(load, 2))
    print(f"{meta['device']}: copy bandwidth {bw:.1f} GB/s")
    new_rows = []
    for name, mod in modules.items():
        wanted = [op for op in getattr(mod, "OPS", (name,)) if not ops or op in ops]
        if not wanted:
            continue
        family = {"ops": wanted} if hasattr(mod, "OPS") else {}
        for case in mod.cases(device, dtype, shapes, modes, **family):
            ms = {k: 1e3 * median_time(fn, device, min_time=args.min_time) for k, fn in case.providers.items()}
            fused = [k for k in FUSED if k in ms]
            best = min(fused, key=ms.get) if fused else None
            gbps = case.nbytes / (ms[best] / 1e3) / 1e9 if best else 0.0
            row = dict(op=case.op, shape=case.shape, mode=case.mode, ms=ms, best=best, gbps=gbps,
                       pct_copy=100 * gbps / bw)
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
