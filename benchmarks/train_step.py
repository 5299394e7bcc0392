"""End-to-end training step: one step of `mdt train`, fused (mdt_kernels + fused Adan) against the plain
PyTorch reference, eager and under torch.compile, with peak memory and an optional per-op profile.

    python -m benchmarks.train_step                                  # MDTv2-S/2 and DiT-S/2, batch 8, fp32
    python -m benchmarks.train_step --models MDTv2-S/2 --compile off --profile
    python -m benchmarks.train_step --precision bf16 --device cuda

What is timed is the body of the trainer's loop (mdt.train._train), set up by the trainer's own
mdt.train_step.build_train_step: t ~ U{0..999} -> Objective (MDTv2: full + masked pass; DiT: one pass),
under autocast for bf16 -> loss.mean().backward() -> Adan step -> EMA update.
Left out: loading the batch (one fixed random latent batch stays on the device; batch and step seeds are
those of the trainer, so every configuration sees the same batch, timesteps, noise and masks), the
trainer's loss bookkeeping, logging and checkpoints.
  fused     mdt_kernels.use_backend("auto") and Adan(fused=True): what `mdt train` runs by default.
  unfused   use_backend("reference") and Adan(fused=False): the plain PyTorch path (`mdt train --no-fused`).
  compiled  torch.compile(Objective), as `mdt train --compile` (its backward too; Adan and EMA stay eager).
Each configuration builds a fresh model, runs --warmup steps (the first one compiles; its time is
reported), then --iters steps, synchronising the device after each; ms/step is their median. With
--rounds R each configuration runs R times, alternating the models and the modes round by round, and
ms/step is the median over all R * iters steps: on a shared machine whose speed drifts, speedups and the
ratio of two models' steps are then measured fairly.

A benchmark that times a broken step is worthless, so fused and unfused must agree (a WARNING in the
output and the table says when they do not): first, for each model, on the loss and the gradients of one
eager step from the same perturbed weights (a fresh model's zero-initialised adaLN and output layers hide
the blocks from its first loss); then, per configuration, on the losses of the first and the last timed
step (same seeds, same random draws; compiled rows draw their random numbers in inductor, so they match
each other, not the eager rows).

Peak memory is measured over what was in use before the model was built. CUDA: the peak of
torch.cuda.max_memory_allocated over the configuration's steps (tensors only, not the allocator cache).
CPU: the peak resident set size (sampled from /proc/self/statm every ms in a thread) during one extra,
untimed step; it includes what the allocators keep, so it is coarser.

--profile runs torch.profiler over --profile-steps more steps (CPU, and CUDA activity on a GPU) and lists
the ops with the largest self time (host time on CPU, device time on CUDA) per step, and the share of the
step per category (matmul/attention, mdt_kernels ops, elementwise/norm, optimizer + EMA, compiled code,
other). Profiled steps run slower than timed ones; shares are of the profiled step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import math
import os
import re
import statistics
import threading
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

import mdt_kernels as mk
from benchmarks._harness import device_name, git_sha, sync, write_results
from mdt.models import MODELS
from mdt.train_step import PRECISIONS, TrainConfig, build_train_step, model_config

MODES = ("fused", "unfused", "fused-aten")
DEFAULT_MODES = ("fused", "unfused")
COMPILE = {"both": (False, True), "off": (False,), "on": (True,)}
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}  # fused vs unfused: losses, gradients (bf16: kernels round differently)
TOP_OPS = 15

# Profile categories, first match wins. Optimizer and mdt_kernels also claim what runs inside them.
MATMUL = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "convolution", "_convolution",
          "conv2d", "mkldnn_convolution", "softmax", "_softmax", "log_softmax", "_log_softmax", "linear_pointwise"}
ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "neg", "abs", "where", "clamp", "clamp_min", "clamp_max",
               "maximum", "minimum", "exp", "log", "pow", "sqrt", "rsqrt", "reciprocal", "square", "erf", "tanh",
               "sigmoid", "silu", "gelu", "sin", "cos", "sum", "mean", "var", "norm", "linalg_vector_norm",
               "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "lerp", "addcmul", "addcdiv",
               "lt", "gt", "le", "ge", "eq", "ne", "fill", "zero", "masked_fill", "threshold", "isfinite"}
CATEGORIES = ("matmul / attention", "mdt_kernels ops", "elementwise / norm", "optimizer + EMA", "compiled code",
              "other")


def base_op(name: str) -> str:
    """'aten::add_' -> 'add'; 'autograd::engine::evaluate_function: NativeLayerNormBackward0' -> 'native_layer_norm'."""
    s = name.split("::")[-1].split(": ")[-1]
    s = re.sub(r"Backward\d*$", "", s)
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", s).lower()
    return re.sub(r"_backward$", "", s).strip("_")


def display_name(name: str) -> str:
    """Our ops' autograd wrappers by op name: the forward one also runs the kernel (no event of its own)."""
    m = re.fullmatch(r"GeneratedBackwardFor_mdt_kernels_(\w+?)_default(Backward)?", name)
    return f"mdt_kernels::{m[1]} [autograd {'bwd node' if m[2] else 'fwd + kernel'}]" if m else name


def category(name: str, ancestors: list[str]) -> str:
    if any(n.startswith("Optimizer.") or n == "aten::_foreach_lerp_" for n in [name, *ancestors]):
        return "optimizer + EMA"  # Adan's zero_grad and step (torch.optim annotates them), and the EMA lerp
    op = base_op(name)
    if name.startswith(("aten::", "mkldnn::")) and op in MATMUL:
        return "matmul / attention"  # also the GEMMs inside mdt_kernels ops (linear, linear_gelu)
    if any("mdt_kernels" in n for n in [name, *ancestors]):
        return "mdt_kernels ops"  # also what runs inside them, and their autograd wrappers
    if op in MATMUL or "attention" in op:
        return "matmul / attention"
    if name.startswith("aten::") and op in ELEMENTWISE:
        return "elementwise / norm"
    if "Compiled" in name or name.startswith(("triton_", "cpp_fused", "Torch-Compiled", "TorchDynamo")):
        return "compiled code"  # inductor's graphs (their fused kernels are not separate ops), dynamo's guards
    return "other"


def make_trainer(name: str, fused: bool, compiled: bool, args, device: torch.device):
    """(step, train_step): step() runs one training step as mdt.train does and returns the loss tensor;
    train_step is the mdt.train_step.TrainStep it calls (model, optimizer, objective)."""
    cfg = TrainConfig(model=name, batch_size=args.batch, fused=fused, precision=args.precision, compile=compiled,
                      grad_checkpoint=getattr(args, "grad_checkpoint", False), seed=args.seed)
    config = model_config(cfg, args.input_size, args.in_channels, args.num_classes)
    train_step = build_train_step(cfg, config, device)  # the trainer's own step, seeded as rank 0
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(args.batch, args.in_channels, args.input_size, args.input_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)

    def step() -> torch.Tensor:
        _, loss = train_step(x, y)
        return loss.detach()

    return step, train_step


def check_step(name: str, args, device: torch.device) -> dict:
    """One eager step of each mode from the same perturbed weights: losses and gradients must agree.

    A fresh model cannot show it: its adaLN-Zero modulation and output layer start at zero, so the first
    loss is the same whatever the blocks compute, and only the output layer gets a gradient."""
    result, ref = {}, None
    for mode in ("unfused", "fused"):
        with mk.use_backend("auto" if mode == "fused" else "reference"):
            step, ts = make_trainer(name, mode == "fused", False, args, device)
            model = ts.model
            gen = torch.Generator().manual_seed(args.seed + 1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=gen).to(device, p.dtype))
            result[f"loss_{mode}"] = step().item()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        if ref is None:
            ref = grads
        else:
            result["grad_rel_err"] = (torch.linalg.vector_norm(grads - ref) / torch.linalg.vector_norm(ref)).item()
        del step, model, ts
    return result


class PeakRSS:
    """Peak resident set size in bytes of this process while in the block (/proc/self/statm, every ms)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(0.001)

    def __enter__(self):
        self.peak = self.now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def release_memory(device: torch.device) -> None:
    """Frees what earlier configurations left, so that the next one's memory baseline is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap pages resident otherwise


def profile_steps(step, device: torch.device, steps: int) -> dict:
    """Self time per op and per category over `steps` steps, per step, in ms and % of the profiled step."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        step_ms = 1e3 * (time.perf_counter() - t0) / steps
    ops: dict[tuple, dict] = {}
    for e in prof.events():
        if e.device_type != DeviceType.CPU:  # kernels: their time is the self device time of the op launching them
            continue
        ancestors, p = [], e.cpu_parent
        while p is not None:
            ancestors.append(p.name)
            p = p.cpu_parent
        cat = category(e.name, ancestors)
        name = display_name(e.name)
        op = ops.setdefault((name, cat), dict(name=name, category=cat, calls=0, ms=0.0))
        op["ms"] += (e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total) / 1e3 / steps
        if not ancestors or ancestors[0] != e.name:  # an op re-dispatching to itself (autograd) is one call
            op["calls"] += 1 / steps
    ops_list = sorted(ops.values(), key=lambda o: -o["ms"])
    cats = dict.fromkeys(CATEGORIES, 0.0)
    for o in ops_list:
        o["pct"] = 100 * o["ms"] / step_ms
        cats[o["category"]] += o["ms"]
    in_ops = sum(cats.values())
    cats["not in any op" if device.type == "cpu" else "device idle"] = max(step_ms - in_ops, 0.0)
    return dict(steps=steps, step_ms=step_ms, in_ops_ms=in_ops, top=ops_list[:TOP_OPS],
                categories={k: dict(ms=v, pct=100 * v / step_ms) for k, v in cats.items()},
                mdt_kernels_ops=sorted({o["name"] for o in ops_list if o["name"].startswith("mdt_kernels::")}))


def run_config(name: str, mode: str, compiled: bool, args, device: torch.device, profile: bool = False) -> dict:
    release_memory(device)
    if compiled:
        torch._dynamo.reset()  # a fresh compile per configuration (and no recompile limit across them)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = PeakRSS.now()
    engine = mk.use_cpu_gemm_engine("aten") if mode == "fused-aten" else contextlib.nullcontext()
    with mk.use_backend("reference" if mode == "unfused" else "auto"), engine:
        step, ts = make_trainer(name, mode != "unfused", compiled, args, device)
        model = ts.model
        n_params = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        loss_first = step().item()  # also the compile
        first_s = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            step()
        sync(device)
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            loss = step()
            sync(device)
            times.append(1e3 * (time.perf_counter() - t0))
        loss_last = loss.item()
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            with PeakRSS() as rss:
                step()
            peak = rss.peak - base
        prof = profile_steps(step, device, args.profile_steps) if profile else None
    del step, model, ts
    row = dict(model=name, params=n_params, mode=mode, compiled=compiled, ms=statistics.median(times),
               ms_min=min(times), times_ms=times, first_step_s=first_s, peak_mb=peak / 2**20, loss_first=loss_first,
               loss_last=loss_last)
    if prof is not None:
        row["profile"] = prof
    print(f"  {name} {mode:7s} {'compiled' if compiled else 'eager':8s}: {row['ms']:9.2f} ms/step (min "
          f"{row['ms_min']:.2f}), first step {first_s:.2f} s, peak {row['peak_mb']:.0f} MB, "
          f"loss {loss_first:.5f} -> {loss_last:.5f}", flush=True)
    return row


def merge_rounds(runs: list[dict]) -> dict:
    """One row from the rounds of a configuration: the median and minimum over all their timed steps."""
    row = dict(runs[0])
    times = [t for r in runs for t in r["times_ms"]]
    row.update(ms=statistics.median(times), ms_min=min(times), times_ms=times, rounds=len(runs),
               round_ms=[r["ms"] for r in runs], peak_mb=max(r["peak_mb"] for r in runs))
    for r in runs:
        if "profile" in r:
            row["profile"] = r["profile"]
    return row


def add_comparisons(rows: list[dict], checks: dict, precision: str) -> list[str]:
    """Speedups (vs unfused at the same compile setting, vs compiled unfused); warnings where fused and unfused
    disagree."""
    rtol, warnings = TOLERANCE[precision], []
    for name, c in checks.items():
        if not (math.isclose(c["loss_fused"], c["loss_unfused"], rel_tol=rtol) and c["grad_rel_err"] <= rtol):
            warnings.append(f"WARNING: {name}: the fused step disagrees with the reference step (losses "
                            f"{c['loss_fused']:.6g} vs {c['loss_unfused']:.6g}, gradients {c['grad_rel_err']:.2e} "
                            f"apart, tolerance {rtol}): these timings may be of a broken step")
    for r in rows:
        unfused = {u["compiled"]: u for u in rows if u["model"] == r["model"] and u["mode"] == "unfused"}
        same, comp = unfused.get(r["compiled"]), unfused.get(True)
        r["speedup_vs_unfused"] = same["ms"] / r["ms"] if same else None
        r["speedup_vs_compiled_unfused"] = comp["ms"] / r["ms"] if comp else None
        if r["mode"] != "unfused" and same is not None:
            for key in ("loss_first", "loss_last"):
                if not math.isclose(r[key], same[key], rel_tol=rtol):
                    warnings.append(f"WARNING: {r['model']} {'compiled' if r['compiled'] else 'eager'}: fused and "
                                    f"unfused {key} differ ({r[key]:.6g} vs {same[key]:.6g}, rtol {rtol})")
    return warnings


def _x(v) -> str:
    return f"{v:.2f}x" if v else "-"


def markdown(meta: dict, rows: list[dict]) -> str:
    c = meta["config"]
    lines = step_head(
        meta, "Training step",
        f"One `mdt train` step (t ~ U, Objective, backward, Adan, EMA) on a batch of "
        f"{c['batch']} latents {c['in_channels']}x{c['input_size']}x{c['input_size']}, {c['num_classes']} classes; "
        f"median of {c['iters']} steps after {c['warmup']} warm-up steps"
        + (f", in each of {c['rounds']} rounds that alternate the models and modes (median over all "
           f"{c['rounds'] * c['iters']} steps; ms/step per round in the JSON)" if c.get("rounds", 1) > 1 else "")
        + ". fused: mdt_kernels (auto) + fused Adan"
        + (f", CPU GEMMs of mdt_kernels.linear/linear_gelu on {meta['cpu_gemm_engine']}" if meta.get("cpu_gemm_engine")
           else "")
        + "; fused-aten: the same with those GEMMs on ATen (MKL), as the reference runs them; "
        "unfused: the PyTorch reference + foreach Adan. First step: its seconds (compiles). Peak: "
        f"{meta['memory']}.") + [
        "| model | params | ops | compile | ms/step | min ms | vs unfused | vs compiled unfused | first step s | "
        "peak MB | loss step 1 | loss last |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['mode']} | {'on' if r['compiled'] else 'off'} | "
                     f"{r['ms']:.2f} | {r['ms_min']:.2f} | {_x(r['speedup_vs_unfused'])} | "
                     f"{_x(r['speedup_vs_compiled_unfused'])} | {r['first_step_s']:.2f} | {r['peak_mb']:.0f} | "
                     f"{r['loss_first']:.5f} | {r['loss_last']:.5f} |")
    lines += ["", "Check, one eager step of each mode from the same perturbed weights (a fresh model's "
              "zero-initialised adaLN and output layers hide the blocks from its first loss):", ""]
    lines += [f"- {name}: loss fused {c['loss_fused']:.6f}, unfused {c['loss_unfused']:.6f}; gradients differ by "
              f"{c['grad_rel_err']:.2e} (relative L2)" for name, c in meta["checks"].items()]
    lines += [""] + meta["warnings"]
    for r in rows:
        p = r.get("profile")
        if p is None:
            continue
        unit = "device" if meta["device_type"] == "cuda" else "host"
        lines += ["", f"## Profile: {r['model']}, {r['mode']}, compile {'on' if r['compiled'] else 'off'}", "",
                  f"{p['steps']} steps under torch.profiler, {p['step_ms']:.2f} ms/step (timed: {r['ms']:.2f}); "
                  f"self {unit} time per step; % of the profiled step.", "",
                  "| category | ms/step | % of step |", "|---|---|---|"]
        lines += [f"| {k} | {v['ms']:.3f} | {v['pct']:.1f}% |" for k, v in p["categories"].items()]
        lines += ["", "| op | category | calls/step | self ms/step | % of step |", "|---|---|---|---|---|"]
        lines += [f"| `{o['name']}` | {o['category']} | {o['calls']:.0f} | {o['ms']:.3f} | {o['pct']:.1f}% |"
                  for o in p["top"]]
    return "\n".join(lines) + "\n"


def step_parser(doc: str, models: list[str], batch: int, in_channels: int = 4, num_classes: int = 1000,
                warmup: int = 3, rounds: int = 1) -> argparse.ArgumentParser:
    """The options of a benchmark of the training step (train_step, step_parts, grad_checkpoint): which models on
    which batch, precision, device and threads, and how many warm-up steps and rounds."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=models, help="names from mdt.models.MODELS")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    p.add_argument("--input-size", type=int, default=32, help="latent side (MDTv2-S/2: 32 for 256px images)")
    p.add_argument("--in-channels", type=int, default=in_channels)
    p.add_argument("--num-classes", type=int, default=num_classes)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps first (at least 1; compiled: 3 or more)")
    p.add_argument("--rounds", type=int, default=rounds,
                   help="runs of each configuration, alternating the configurations (a fresh model each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p


def parse_step_args(p: argparse.ArgumentParser, argv, counts=("warmup", "rounds")) -> argparse.Namespace:
    """step_parser's arguments, checked (models, device, counts >= 1), with the thread count applied."""
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model {', '.join(map(repr, unknown))}; choose from {', '.join(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this torch has no usable GPU (torch.cuda.is_available() is False)")
    if min(getattr(args, c) for c in counts) < 1:
        p.error(f"{', '.join('--' + c.replace('_', '-') for c in counts)} must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def step_meta(device: torch.device, args, config: dict, **extra) -> dict:
    """The header of a step benchmark's table: machine, software, commit, load, how memory is measured; warns
    when a busy CPU makes timings meaningless (another busy process steals a core from the OpenMP threads)."""
    load = os.getloadavg()[0]
    if device.type == "cpu" and load > 0.5:
        print(f"warning: load average {load:.2f}; CPU timings on a busy machine are not representative")
    if device.type == "cuda":
        memory = ("peak torch.cuda.max_memory_allocated over the steps, minus what was allocated before the model "
                  "was built")
    else:
        memory = ("peak resident set size during one extra step (sampled every ms), minus the RSS before the model was "
                  "built; includes allocator caches, and on compiled rows the compiler's own memory")
    return dict(device=device_name(device), device_type=device.type, dtype=args.precision,
                threads=torch.get_num_threads(), torch=torch.__version__, commit=git_sha(),
                date=datetime.date.today().isoformat(), load_avg=round(load, 2), memory=memory, config=config, **extra)


def step_head(meta: dict, title: str, about: str) -> list[str]:
    """The lines above a step benchmark's tables: the title with the machine, then software, threads, commit,
    date and load before `about`."""
    return [f"# {title}: {meta['device']} ({meta['dtype']})", "",
            f"torch {meta['torch']}, {meta['threads']} threads, commit {meta['commit']}, {meta['date']}, load average "
            f"at start {meta['load_avg']}. {about}", ""]


def build_parser() -> argparse.ArgumentParser:
    """The command line (benchmarks/gpu_session.sh is checked against it by the tests)."""
    p = step_parser(__doc__, ["MDTv2-S/2", "DiT-S/2"], batch=8)
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES,
                   help="fused-aten: fused, with the CPU GEMMs of mdt_kernels on ATen instead of oneDNN")
    p.add_argument("--compile", default="both", choices=list(COMPILE), help="torch.compile the Objective")
    p.add_argument("--profile", action="store_true", help="per-op profile of every configuration")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed steps per round")
    return p


def main(argv=None) -> None:
    args = parse_step_args(build_parser(), argv, ("warmup", "iters", "rounds", "profile_steps"))
    device = torch.device(args.device)

    config = {k: getattr(args, k) for k in ("models", "batch", "modes", "compile", "input_size", "in_channels",
                                             "num_classes", "warmup", "iters", "rounds", "seed", "profile_steps")}
    meta = step_meta(device, args, config, checks={}, warnings=[],
                     cpu_gemm_engine=(mk.cpu_gemm_engine(torch.bfloat16 if args.precision == "bf16" else torch.float32)
                                      if device.type == "cpu" else None))
    print(f"{meta['device']}, torch {meta['torch']}, {args.precision}, batch {args.batch}")
    # The correctness check runs first: its untimed steps also do the once-per-process set-up (library loads,
    # thread pools) that would otherwise count in the first configuration's memory.
    for name in args.models:
        meta["checks"][name] = c = check_step(name, args, device)
        print(f"  {name} check (perturbed weights, one eager step): loss fused {c['loss_fused']:.6f}, unfused "
              f"{c['loss_unfused']:.6f}, gradient relative difference {c['grad_rel_err']:.2e}")
    done = []  # rows of the finished compile settings
    for compiled in COMPILE[args.compile]:
        # Rounds alternate the models and the modes (MDTv2 fused, MDTv2 unfused, DiT fused, ..., then again), so
        # a drift in machine speed over the minutes of a run weighs on all alike; the last round is profiled.
        runs = {(name, mode): [] for name in args.models for mode in args.modes}
        for r in range(args.rounds):
            for name in args.models:
                for mode in args.modes:
                    last = r == args.rounds - 1
                    runs[name, mode].append(run_config(name, mode, compiled, args, device,
                                                       profile=args.profile and last))
                    # Written after every configuration: a run cut off by a time limit keeps what it measured.
                    rows = done + [merge_rounds(v) for v in runs.values() if v]
                    meta["warnings"] = add_comparisons(rows, meta["checks"], args.precision)
                    stem = write_results(args.out, "train_step", device, meta, rows, markdown, quiet=True)
        done = rows
    for w in meta["warnings"]:
        print(w)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
