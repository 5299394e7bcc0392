"""Where a training step spends its time, part by part, against where its FLOPs are: MDTv2 and DiT side by side.

    python -m benchmarks.step_parts --models MDTv2-Ti/2 DiT-Ti/2 --batch 64 --input-size 32 --in-channels 1 \\
        --num-classes 10

The step is the trainer's own (mdt.train_step.build_train_step, fused ops, eager). Its parts:
  <pass> / embed             patch, timestep and label embeddings        (pass: full pass, masked pass)
  <pass> / masking           the masked pass's mask draw (ids_keep)
  <pass> / encoder           MDTv2's encoder blocks (masked pass: on the kept tokens only); DiT: its blocks
  <pass> / side-interpolater mask tokens in, the side block, the masked shortcut
  <pass> / decoder           MDTv2's decoder blocks (every token, also in the masked pass)
  <pass> / final layer       final adaLN + linear, unpatchify
  <pass> / rest              what the pass does between its parts (the gather of kept tokens, pos-embed adds)
  loss                       the diffusion loss around the passes (q_sample, min-SNR MSE, VB term)
  optimizer, zero_grad, EMA  Adan's step, zeroing the gradients, the EMA lerp
  backward: accumulate       writing the parameters' .grad
  other                      the rest of the step (timestep draw, the loss mean, Python between ops)
Each part's backward is the backward of the ops its forward ran, found through autograd's sequence numbers:
a node created inside a part belongs to it, so its backward time (torch.profiler) and FLOPs go there too.

Time: torch.profiler over --steps steps, in --rounds rounds that alternate the models (so a drift in machine speed
weighs on both alike); a part's time is its median per-step time over the rounds. Profiling slows small ops,
so the profiled step is slower than a timed one; shares are of the profiled step, and the unprofiled step time
of each round is reported beside it.
FLOPs: the same step's forward and backward on the PyTorch reference ops with explicit ("math") attention,
counted by torch.utils.flop_counter's formulas per part (matrix products; elementwise work counts 0).
A part whose share of the time is over 1.5x its share of the FLOPs costs more than its work.

Writes benchmarks/results/step_parts_<device>_<dtype>.{md,json}.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, record_function
from torch.utils.flop_counter import FlopCounterMode

import mdt_kernels as mk
from benchmarks._harness import write_results
from benchmarks.train_step import make_trainer, parse_step_args, step_head, step_meta, step_parser
from mdt.models import MDTv2

PREFIX = "part::"
REST = "rest"  # a pass's own work between its parts
SLOW = 1.5  # time share over this many times the FLOP share: the part costs more than its work


def part_name(region: str) -> str:
    """A region's part: a pass's own region is its "rest"."""
    return f"{region}/{REST}" if region.endswith("pass") else region


class PartLabels:
    """Labels regions of the forward (record_function ranges for the profiler, a label stack for FLOP counting)
    and the autograd sequence numbers of the nodes created in each, so their backward is attributed too."""

    def __init__(self):
        self.stack: list[str] = []
        self.starts: list[int] = []  # sorted interval starts; intervals never overlap partially (nesting only)
        self.intervals: list[tuple[int, int, str]] = []

    @staticmethod
    def _next_seq() -> int:
        with torch.enable_grad():  # a throwaway node: its number is the next one autograd hands out
            return (torch.zeros((), requires_grad=True) * 1).grad_fn._sequence_nr() + 1

    def reset(self):
        self.starts, self.intervals = [], []

    @contextlib.contextmanager
    def region(self, name: str):
        passes = [s.split("/")[0] for s in self.stack if s.endswith("pass") or "pass/" in s]
        full = f"{passes[-1]}/{name}" if passes and not name.endswith("pass") else name
        self.stack.append(full)
        start = self._next_seq()
        try:
            with record_function(PREFIX + full):
                yield
        finally:
            self.stack.pop()
            end = self._next_seq()
            i = bisect.bisect_right(self.starts, start)
            self.starts.insert(i, start)
            self.intervals.insert(i, (start, end, part_name(full)))

    def label_of(self, seq: int) -> str | None:
        """The innermost region whose forward created node `seq`."""
        for _, end, name in reversed(self.intervals[:bisect.bisect_right(self.starts, seq)]):
            if seq < end:  # regions only nest: the latest-starting one that contains seq is the innermost
                return name
        return None

    def wrap(self, fn, name):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with self.region(name):
                return fn(*args, **kwargs)

        return run


def label_model(model, labels: PartLabels) -> None:
    """Wraps the parts of an MDTv2 or DiT (instance attributes; the classes are untouched)."""
    forward = model.forward

    def labelled_forward(*args, **kwargs):
        with labels.region("masked pass" if kwargs.get("enable_mask") else "full pass"):
            return forward(*args, **kwargs)

    model.forward = labelled_forward
    model._embed = labels.wrap(model._embed, "embed")
    model.unpatchify = labels.wrap(model.unpatchify, "final layer")
    model.final_layer.forward = labels.wrap(model.final_layer.forward, "final layer")
    if isinstance(model, MDTv2):
        model.random_ids_keep = labels.wrap(model.random_ids_keep, "masking")
        model.forward_side_interpolater = labels.wrap(model.forward_side_interpolater, "side-interpolater")
        groups = (("encoder", [*model.en_inblocks, *model.en_outblocks]), ("decoder", model.de_blocks))
    else:
        groups = (("blocks", model.blocks),)
    for name, blocks in groups:
        for block in blocks:
            block.forward = labels.wrap(block.forward, name)


def label_objective(train_step, labels: PartLabels) -> None:
    """The Objective (the loss around the passes, which are regions of their own)."""
    objective = train_step.step_fn
    objective.forward = labels.wrap(objective.forward, "loss")


class _PartFlops(FlopCounterMode):
    """FlopCounterMode whose counts go to the current part: the label stack in the forward, the part of the
    autograd node being run in the backward."""

    def __init__(self, labels: PartLabels):
        super().__init__(display=False)
        self.labels = labels
        self.by_part: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # [forward, backward]

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            node = torch._C._current_autograd_node()
            if node is None:
                self.by_part[part_name(self.labels.stack[-1]) if self.labels.stack else "other"][0] += flops
            else:
                self.by_part[self.labels.label_of(node._sequence_nr()) or "other"][1] += flops
        return out


def count_flops(name: str, args, device) -> dict:
    """{part: [forward GFLOP, backward GFLOP]} of one step on the reference ops with explicit attention."""
    labels = PartLabels()
    with mk.use_backend("reference"):
        step, ts = make_trainer(name, False, False, args, device)
        ts.model.set_attention_backend("math")
        label_model(ts.model, labels)
        label_objective(ts, labels)
        counter = _PartFlops(labels)
        with counter:
            step()
    return {k: [v[0] / 1e9, v[1] / 1e9] for k, v in counter.by_part.items()}


def _top_level(e) -> bool:
    return e.cpu_parent is None


def part_times(prof, labels: PartLabels, steps: int) -> dict:
    """{part: [forward ms, backward ms]} per step, from the profiler's events."""
    times: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    events = list(prof.events())
    for e in events:
        if e.name.startswith(PREFIX):  # forward: the region minus the regions nested in it
            nested = 0.0
            stack = [c for c in e.cpu_children]
            while stack:
                c = stack.pop()
                if c.name.startswith(PREFIX):
                    nested += c.cpu_time_total
                else:
                    stack.extend(c.cpu_children)
            times[part_name(e.name[len(PREFIX):])][0] += (e.cpu_time_total - nested) / 1e3
        elif e.name.startswith("autograd::engine::evaluate_function:"):
            part = "backward: accumulate" if "AccumulateGrad" in e.name else labels.label_of(e.sequence_nr)
            times[part or "other"][1] += e.cpu_time_total / 1e3
        elif _top_level(e) and e.name.startswith("Optimizer.step"):
            times["optimizer"][0] += e.cpu_time_total / 1e3
        elif _top_level(e) and e.name.startswith("Optimizer.zero_grad"):
            times["zero_grad"][0] += e.cpu_time_total / 1e3
        elif _top_level(e) and e.name == "aten::_foreach_lerp_":
            times["EMA"][0] += e.cpu_time_total / 1e3
    return {k: [v[0] / steps, v[1] / steps] for k, v in times.items()}


def profile_model(name: str, args, device) -> dict:
    """One round: a fresh fused trainer, warm-up, timed steps, then profiled steps with the parts labelled."""
    labels = PartLabels()
    step, ts = make_trainer(name, True, False, args, device)
    for _ in range(args.warmup):
        step()
    timed = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        timed.append(1e3 * (time.perf_counter() - t0))
    label_model(ts.model, labels)
    label_objective(ts, labels)
    step()
    labels.reset()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        profiled_ms = 1e3 * (time.perf_counter() - t0) / args.steps
    times = part_times(prof, labels, args.steps)
    attributed = sum(f + b for f, b in times.values())
    times["other"] = [times.get("other", [0.0, 0.0])[0] + max(profiled_ms - attributed, 0.0),
                      times.get("other", [0.0, 0.0])[1]]
    return {"step_ms": statistics.median(timed), "profiled_ms": profiled_ms, "parts": times}


def merge(rounds: list[dict], flops: dict) -> dict:
    """Median over rounds of each part's times; shares of time and of FLOPs."""
    names = sorted({p for r in rounds for p in r["parts"]} | set(flops))
    parts = {}
    for p in names:
        fwd = statistics.median(r["parts"].get(p, [0.0, 0.0])[0] for r in rounds)
        bwd = statistics.median(r["parts"].get(p, [0.0, 0.0])[1] for r in rounds)
        parts[p] = {"fwd_ms": fwd, "bwd_ms": bwd, "fwd_gflop": flops.get(p, [0.0, 0.0])[0],
                    "bwd_gflop": flops.get(p, [0.0, 0.0])[1]}
    total_ms = sum(v["fwd_ms"] + v["bwd_ms"] for v in parts.values())
    total_gflop = sum(v["fwd_gflop"] + v["bwd_gflop"] for v in parts.values())
    for v in parts.values():
        v["time_share"] = (v["fwd_ms"] + v["bwd_ms"]) / total_ms
        v["flop_share"] = (v["fwd_gflop"] + v["bwd_gflop"]) / total_gflop
    return {"step_ms": statistics.median(r["step_ms"] for r in rounds),
            "step_ms_rounds": [r["step_ms"] for r in rounds],
            "profiled_ms": statistics.median(r["profiled_ms"] for r in rounds), "total_gflop": total_gflop,
            "parts": parts}


ORDER = ("full pass", "masked pass", "loss", "backward: accumulate", "optimizer", "zero_grad", "EMA", "other")


def _order(part: str):
    head = part.split("/")[0]
    return (ORDER.index(head) if head in ORDER else len(ORDER), part)


def markdown(meta: dict, rows: list[dict]) -> str:
    c = meta["config"]
    lines = step_head(
        meta, "Training step by part",
        f"Batch {c['batch']} of {c['in_channels']}x{c['input_size']}x"
        f"{c['input_size']}, {c['num_classes']} classes; fused ops, eager. {c['rounds']} rounds alternating the "
        f"models, each {c['warmup']} warm-up, {c['steps']} timed and {c['steps']} profiled steps; medians over "
        "rounds. Times are host time under torch.profiler (a part's backward: its autograd nodes); GFLOP from "
        "torch.utils.flop_counter on the reference ops. **slow**: time share over "
        f"{SLOW}x the FLOP share.")
    lines += ["| model | step ms (timed) | step ms (profiled) | GFLOP/step | GFLOP/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['step_ms']:.1f} | {r['profiled_ms']:.1f} | {r['total_gflop']:.2f} | "
              f"{r['total_gflop'] / r['step_ms'] * 1e3:.1f} |" for r in rows]
    if len(rows) == 2:
        a, b = rows
        lines += ["", f"Step time ratio {a['model']} / {b['model']}: {a['step_ms'] / b['step_ms']:.2f}x (timed, "
                  f"per round: {', '.join(f'{x / y:.2f}x' for x, y in zip(a['step_ms_rounds'], b['step_ms_rounds']))}"
                  f"); FLOP ratio {a['total_gflop'] / b['total_gflop']:.2f}x."]
    for r in rows:
        lines += ["", f"## {r['model']}", "",
                  "| part | fwd ms | bwd ms | fwd GFLOP | bwd GFLOP | time share | FLOP share | time / FLOP share |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in sorted(r["parts"], key=_order):
            v = r["parts"][p]
            ratio = v["time_share"] / v["flop_share"] if v["flop_share"] > 0 else float("inf")
            flag = " **slow**" if ratio > SLOW else ""
            lines.append(f"| {p} | {v['fwd_ms']:.2f} | {v['bwd_ms']:.2f} | {v['fwd_gflop']:.3f} | "
                         f"{v['bwd_gflop']:.3f} | {100 * v['time_share']:.1f}% | {100 * v['flop_share']:.1f}% | "
                         f"{'-' if v['flop_share'] == 0 else f'{ratio:.2f}'}{flag} |")
    return "\n".join(lines) + "\n"


def build_parser():
    p = step_parser(__doc__, ["MDTv2-Ti/2", "DiT-Ti/2"], batch=64, in_channels=1, num_classes=10, warmup=2, rounds=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps, then as many profiled, per round")
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = parse_step_args(p, argv, ("warmup", "steps", "rounds"))
    if args.device != "cpu":
        p.error("step_parts profiles host time: --device cpu only")
    device = torch.device(args.device)
    meta = step_meta(device, args, vars(args))
    flops = {name: count_flops(name, args, device) for name in args.models}
    rounds = defaultdict(list)
    for r in range(args.rounds):
        for name in args.models:
            rounds[name].append(profile_model(name, args, device))
            print(f"  round {r + 1} {name}: {rounds[name][-1]['step_ms']:.1f} ms/step timed, "
                  f"{rounds[name][-1]['profiled_ms']:.1f} profiled", flush=True)
    rows = [{"model": name, **merge(rounds[name], flops[name])} for name in args.models]
    stem = write_results(args.out, "step_parts", device, meta, rows, markdown, quiet=True)
    print(markdown(meta, rows))
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
