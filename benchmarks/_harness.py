"""Timing, bandwidth and the Case type shared by the per-op benchmark cases.

A Case is one (op, shape, mode) row. Its `providers` map a name to a zero-argument callable doing the
timed work: "eager" (the plain-PyTorch reference), "compile" (torch.compile of that reference),
"baseline" (what MDT/DiT code does today, e.g. repeat + torch.gather), and one entry per backend that
can run here. `nbytes` is the minimal number of bytes the mode must move, for achieved GB/s.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch._functorch import config as functorch_config

import mdt_kernels as mk

# MDTv2 shapes from ../shared/MDT_SPEC.md: 256 tokens (16x16 grid), ~60% kept in the masked pass.
SHAPES = {
    "S/2": dict(B=32, N=256, G=16, D=384, H=6, K=153),
    "XL/2": dict(B=8, N=256, G=16, D=1152, H=16, K=153),
}
MODES = ("fwd", "bwd", "fwd+bwd")

# Timing the backward alone reuses one graph (retain_graph=True), which a compiled backward forbids when it
# frees ("donates") its saved buffers. Dynamo reuses a function's compiled graph across modes, whatever the
# setting was when it compiled, so donation is off for the whole profiling process. (Donation saves memory,
# not time.)
functorch_config.donated_buffer = False


@dataclass
class Case:
    op: str
    shape: str
    mode: str
    nbytes: int
    providers: dict[str, Callable[[], object]] = field(default_factory=dict)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# A GPU's L2 (50 MB on an H100/H200) would keep a small op's inputs between repetitions and inflate its GB/s:
# every timed call on a GPU starts from a cold L2, after writing a buffer several times the L2's size.
_L2_FLUSH_BYTES = 512 * 2**20
_flush_buffers: dict[torch.device, torch.Tensor] = {}


def flush_l2(device: torch.device | str) -> None:
    """Evicts the GPU's L2 cache (nothing on a CPU, whose timings keep their warm caches as a training loop does)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if device not in _flush_buffers:
        _flush_buffers[device] = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    _flush_buffers[device].zero_()


def median_time(fn: Callable[[], object], device, min_time: float = 0.3, min_reps: int = 7, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds (interleaved_times of fn alone)."""
    return interleaved_times({"fn": fn}, device, min_time=min_time, min_reps=min_reps, warmup=warmup)["fn"].median


@dataclass
class Timing:
    """One provider's timed calls: seconds per call and the minor page faults each call took."""
    times: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Half the interquartile range over the median: 0.05 reads as +-5%."""
        q1, _, q3 = statistics.quantiles(self.times, n=4) if len(self.times) > 1 else self.times * 3
        return (q3 - q1) / 2 / self.median

    @property
    def faults_per_call(self) -> float:
        return statistics.median(self.faults)


def interleaved_times(fns: dict[str, Callable[[], object]], device, min_time: float = 0.3, min_reps: int = 7,
                      warmup: int = 2) -> dict[str, Timing]:
    """Times every callable of fns round-robin (each round calls each once, starting one further along), so a
    change of machine state (another process, the allocator, the clock) falls on all of them alike; min_time
    seconds per callable at least. Synchronises the device around every call; on a GPU each call starts with a
    cold L2 (flush_l2, outside the timed interval)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    out = {name: Timing() for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (time.perf_counter() - start < min_time * len(names) and rounds < 1000):
        for i in range(len(names)):
            name = names[(rounds + i) % len(names)]
            flush_l2(device)
            sync(device)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            out[name].times.append(time.perf_counter() - t0)
            out[name].faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        rounds += 1
    return out


# glibc's malloc serves a large block (over a threshold that it moves as the program frees, up to 32 MB) with a
# fresh mmap and gives freed heap tops back to the system, so an op's output can come as new pages that fault
# in on first write, on some calls or runs and not others: an 8 ms kernel call timed at 36 ms. mallopt from
# glibc's <malloc.h>: no mmap for any size, and no trimming.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_heap() -> bool:
    """Makes glibc's malloc keep what it frees in the heap (no mmap, no trimming), so repeated calls mostly reuse
    warm pages, as a training loop's steady state does (not always: posix_memalign can still grow the heap for a
    lone large buffer, so callers count the faults); False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def copy_bandwidth(device, nbytes: int | None = None) -> float:
    """Measured device copy bandwidth in GB/s (bytes read + bytes written per second), with buffers far beyond
    the caches: 256 MiB each on a CPU, 2 GiB each on a GPU (40x a 50 MB L2, flushed before every copy)."""
    nbytes = nbytes or (2**31 if torch.device(device).type == "cuda" else 256 * 2**20)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_time(lambda: dst.copy_(src), device, min_time=1.0) / 1e9


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, thread count and the instruction set the CPU kernels run."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads, {mk.cpu_capability() or 'no'} kernels"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def run_parser(doc: str | None, dtypes, shapes, min_time: float) -> argparse.ArgumentParser:
    """The options every timing benchmark takes: --shapes, --dtype, --device, --min-time, --out."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(shapes), help=f"comma-separated, from {list(shapes)}")
    p.add_argument("--dtype", default="fp32", choices=dtypes)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--min-time", type=float, default=min_time, help="seconds of timing per provider")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p


def split_choices(p: argparse.ArgumentParser, value: str, known, what: str) -> list[str]:
    """A comma-separated option as a list; an unknown entry is a usage error naming the known ones."""
    chosen = [v for v in value.split(",") if v]
    if any(v not in known for v in chosen):
        p.error(f"unknown {what} in {chosen}; known: {list(known)}")
    return chosen


def meta_line(meta: dict) -> str:
    """The first sentence of a results table: software, copy bandwidth, commit, date and load."""
    return (f"torch {meta['torch']}, measured copy bandwidth {meta['copy_gbps']:.1f} GB/s, commit {meta['commit']}, "
            f"{meta['date']}, load average at start {meta.get('load_avg', '?')}.")


def table_head(title: str, meta: dict, about: str, columns: list[str]) -> list[str]:
    """The lines above a results table's rows: title with the machine, meta_line and `about`, the header row."""
    return [f"# {title}: {meta['device']}", "", f"{meta_line(meta)} {about}", "", "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns)]


def run_meta(device: torch.device, dtype: str) -> dict:
    """The header of a results table (machine, copy bandwidth, commit, load); warns when a busy CPU makes
    timings meaningless (another busy process steals a core from the OpenMP threads, and every parallel
    region then waits for a scheduler tick)."""
    load = os.getloadavg()[0]
    if device.type == "cpu" and load > 0.5:
        print(f"warning: load average {load:.2f}; CPU timings on a busy machine are not representative")
    meta = dict(device=device_name(device), dtype=dtype, torch=torch.__version__, copy_gbps=copy_bandwidth(device),
                commit=git_sha(), date=datetime.date.today().isoformat(), load_avg=round(load, 2))
    print(f"{meta['device']}: copy bandwidth {meta['copy_gbps']:.1f} GB/s")
    return meta


def timed_closure(fn: Callable, inputs: Sequence, grad_inputs: Sequence[torch.Tensor], grads, mode: str):
    """A zero-argument callable running `fn(*inputs)` forward, backward, or both.

    fwd runs under no_grad; bwd times torch.autograd.grad on a graph built once (retain_graph);
    fwd+bwd builds the graph and differentiates it, as a training step does.
    """
    grads = grads if isinstance(grads, (tuple, list)) else (grads,)

    def outputs(out):
        return out if isinstance(out, (tuple, list)) else (out,)

    if mode == "fwd":

        def run():
            with torch.no_grad():
                return fn(*inputs)

        return run
    if mode == "bwd":
        out = outputs(fn(*inputs))
        return lambda: torch.autograd.grad(out, grad_inputs, grads, retain_graph=True)
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(outputs(fn(*inputs)), grad_inputs, grads)
    raise ValueError(f"unknown mode {mode!r}")


def with_backend(backend: str, fn: Callable) -> Callable:
    def run(*args):
        with mk.use_backend(backend):
            return fn(*args)

    return run


def op_providers(
    public_fn: Callable,
    reference: Callable,
    baseline: Callable | None,
    inputs: Sequence,
    grad_inputs: Sequence[torch.Tensor],
    grads,
    mode: str,
    device,
) -> dict[str, Callable[[], object]]:
    """The standard provider set of an op: eager reference, torch.compile(reference), the baseline,
    and the public function on every backend that can run on `device` (interpreted Triton excluded)."""
    dev = torch.device(device)
    fns: dict[str, Callable] = {"eager": reference, "compile": torch.compile(reference, dynamic=False)}
    if baseline is not None:
        fns["baseline"] = baseline
    for b in mk.available_backends(dev):
        if b == "reference" or (b == "triton" and dev.type == "cpu"):
            continue
        fns[b] = with_backend(b, public_fn)
    return {name: timed_closure(f, inputs, grad_inputs, grads, mode) for name, f in fns.items()}


def device_tag(device: torch.device, meta: dict | None = None) -> str:
    """The machine part of a results file name: cpu-<capability the kernels ran> (tables from CPUs with
    different instruction sets sit side by side), or the GPU's name."""
    if device.type == "cpu":
        return f"cpu-{mk.cpu_capability() or 'noext'}"
    return (meta["device"] if meta else torch.cuda.get_device_name(device)).replace(" ", "_")


def results_stem(out_dir: str, name: str, device: torch.device, meta: dict) -> str:
    """Path without extension of a results table: <out_dir>/<name>_<device_tag>_<dtype>."""
    return os.path.join(out_dir, f"{name}_{device_tag(device, meta)}_{meta['dtype']}")


def write_results(out_dir: str, name: str, device: torch.device, meta: dict, rows: list[dict],
                  markdown: Callable[[dict, list[dict]], str], quiet: bool = False) -> str:
    """Writes rows to results_stem(...).{json,md}; returns the stem."""
    os.makedirs(out_dir, exist_ok=True)
    base = results_stem(out_dir, name, device, meta)
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(meta, rows))
    if not quiet:
        print(f"wrote {base}.md and .json")
    return base
