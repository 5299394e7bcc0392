"""Every Triton kernel of mdt_kernels compiled ahead of time for real GPUs (sm_80 = A100, sm_90 = H100), no
GPU needed: Triton lowers to PTX and runs the ptxas it ships. CI runs it (``python -m benchmarks.triton_aot``).

What is compiled is what the op wrappers launch: every declared op with a Triton kernel runs its example
calls (mdt_kernels._registry) forward and backward on the triton backend with CPU tensors of the test
shapes and of MDTv2-S/2 and XL/2 at 256 px (the unmasked and the masked pass), fp32/fp16/bf16 (adan_step:
its dtype pairs and flags); each kernel launch is intercepted (``JITFunction.run``) instead of executed,
and Triton's own binder turns its arguments into the specialisation (argument types, constexprs,
divisibility/alignment attributes, num_warps, ...) the JIT would compile on a GPU. The only
device-dependent launch parameter, adan's (BLOCK, CHUNK), is taken from ``adan._launch_shape`` for a CUDA
device. Each distinct specialisation is then compiled for each target
with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, with a fresh cache dir (a
real compile, every run).

Fails (exit 1) on a compile error or on shared memory over the target's per-block limit; reports the
registers and the stack frame (spills) of each kernel from the cubin (cuobjdump --dump-resource-usage).

Cost: every variant is a real compile, 343 per target at present. The elementwise and gather kernels take
about 1 s each on one core; the rel_pos_attention kernels at MDT sizes (fp32 "ieee" dots on 32x64x64 and
32x64x128 tiles) take minutes each, so the whole check wants many cores (-j, default all of them).
--shapes, --op, --dtype, --kernel and --arch narrow a run.

    python -m benchmarks.triton_aot                 # all kernels, sm_80 and sm_90
    python -m benchmarks.triton_aot --arch 90 --kernel _gather_tokens_fwd_kernel --shapes test
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from unittest import mock

# Before triton is imported: real JIT functions (not the interpreter), and a cache of our own.
sys.stdout.reconfigure(line_buffering=True)  # progress survives a compiler crash
if os.environ.get("TRITON_INTERPRET", "0") != "0":
    sys.exit("benchmarks.triton_aot compiles for GPUs: run it without TRITON_INTERPRET")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

import mdt_kernels as mk  # noqa: E402
from mdt_kernels import _dispatch, _registry  # noqa: E402
from mdt_kernels._registry import Sizes  # noqa: E402
from mdt_kernels.ops import adan as adan_ops  # noqa: E402

# Shared memory one block may use (with the opt-in), bytes: CUDA C Programming Guide, compute capabilities
# table ("maximum amount of shared memory per thread block"): 163 KB on 8.0, 227 KB on 9.0.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# MDT_SPEC.md: 256 px -> 32x32 latents, patch 2 -> a 16x16 grid of N = 256 tokens; the masked pass keeps
# Nk = floor(256 (1 - r)) tokens, r in [0.3, 0.5): 129..179, 153 on average (N = 256 is the case of a
# multiple of 16, which Triton specialises on). Batch per GPU: S/2 32 (8 GPUs x 32), XL/2 8 (global 256 on
# 32 GPUs).
GRID, TOKENS, KEPT = 16, 256, (153,)
MODELS = {"S/2": dict(D=384, H=6, B=32), "XL/2": dict(D=1152, H=16, B=8)}


def shape_sets(which: str) -> dict[str, list[Sizes]]:
    """name -> sizes of the ops' example calls. test: the awkward sizes of tests/ops (single feature, odd
    widths, a row longer than one adaLN block, tiny grids); S/2, XL/2: 256 px, unmasked pass (K = N) and
    masked passes."""
    sets = {}
    if which in ("test", "all"):
        sets["test"] = [Sizes(2, 5, 3, 1, 1, 0), Sizes(3, 9, 4, 97, 2, 3), Sizes(1, 2, 2, 4097, 1, 0)]
    if which in ("mdt", "all"):
        for name, m in MODELS.items():
            sets[name] = [Sizes(m["B"], TOKENS, k, m["D"], m["H"], GRID) for k in (TOKENS, *KEPT)]
    return sets


# ---------------------------------------------------------------------------------------------------
# Running the ops with launches intercepted


@dataclass
class Launch:
    kernel: JITFunction
    args: tuple
    kwargs: dict
    where: str  # which op call launched it (for the report)


@contextmanager
def intercepted_launches(on_launch, where: list):
    """Triton launches call on_launch(Launch) instead of running; the triton backend counts as available for
    CPU tensors; adan's launch shape is its CUDA one; torch.mm (linear_gelu's GEMMs, whose values do not
    matter here) only allocates its result, so the MDT-size calls cost no CPU GEMMs."""
    real_shape = adan_ops._launch_shape

    def record(self, *args, grid, warmup, **kwargs):
        on_launch(Launch(self, args, kwargs, where[0]))

    def mm_shape_only(a, b):
        return a.new_empty((a.shape[0], b.shape[1]))

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(JITFunction, "run", record))
        stack.enter_context(mock.patch.object(_dispatch, "_TRITON_INTERPRET", True))
        stack.enter_context(mock.patch.object(adan_ops, "_launch_shape", lambda _: real_shape(torch.device("cuda"))))
        stack.enter_context(mock.patch.object(torch, "mm", mm_shape_only))
        yield


def run_example(op: _registry.Op, example: _registry.Example) -> None:
    """op's public function on an example call, then its backward (cotangents of ones) when it has one."""
    args = [a.detach().requires_grad_() if i in example.grad else a for i, a in enumerate(example.args)]
    outs = op.function(*args, **example.kwargs)
    outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if isinstance(o, torch.Tensor)]
    outs = [o for o in outs if o.requires_grad]
    if outs:
        torch.autograd.grad(outs, [args[i] for i in example.grad], [torch.ones_like(o) for o in outs],
                            allow_unused=True)


def record_variants(which: str, archs, kernels=None, ops=None, dtypes=None) -> dict[int, list]:
    """arch -> the distinct specialisations (Variant) the op calls launch, each with the calls that need it.
    Launches are specialised as they happen (their tensors are not kept). kernels, ops, dtypes: only these
    (names; None: all)."""
    targets = {arch: GPUTarget("cuda", arch, 32) for arch in archs}
    seen: dict[int, dict] = {arch: {} for arch in archs}
    where = [""]

    def on_launch(launch):
        if kernels and launch.kernel.__name__ not in kernels:
            return
        for arch, target in targets.items():
            signature, constexprs, attrs, options = specialise(launch, target)
            key = repr((launch.kernel.__name__, signature, sorted(constexprs.items()), sorted(attrs.items()),
                        options))
            v = seen[arch].setdefault(key, Variant(launch.kernel, signature, constexprs, attrs, options.__dict__))
            if launch.where not in v.where:
                v.where.append(launch.where)

    with intercepted_launches(on_launch, where), mk.use_backend("triton"):
        for op_name, op in sorted(_registry.all_ops().items()):
            if "triton" not in op.impls or (ops and op_name not in ops):
                continue
            for set_name, sizes in shape_sets(which).items():
                for s in sizes:
                    for dname, dtype in DTYPES.items():
                        if dtypes and dname not in dtypes:
                            continue
                        for example in op.examples(s, dtype):
                            where[0] = f"{op_name} {set_name} B={s.B} N={s.N} K={s.K} D={s.D} H={s.H} {dname}"
                            run_example(op, example)
    return {arch: list(vs.values()) for arch, vs in seen.items()}


# ---------------------------------------------------------------------------------------------------
# Specialising and compiling


@dataclass
class Variant:
    kernel: JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    where: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kernel.__name__


def specialise(launch: Launch, target: GPUTarget):
    """What JITFunction.run would compile for this launch on `target`: Triton's own binder and argument
    packing (the functions run() calls), fed the launch's arguments."""
    kernel, kwargs = launch.kernel, dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # as run() adds them (Triton 3.9)
        if hasattr(triton.knobs.compilation, name):
            kwargs[name] = getattr(triton.knobs.compilation, name)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """REG (registers per thread), STACK (stack frame bytes: spills and local arrays), LOCAL, SHARED of the
    cubin's kernel, from cuobjdump (shipped with Triton)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}


@dataclass
class Result:
    variant: Variant
    arch: int
    error: str | None = None
    shared: int = 0
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def compile_variant(v: Variant, arch: int, smem_limit: int | None = None) -> Result:
    limit = SMEM_LIMIT[arch] if smem_limit is None else smem_limit
    t0 = time.perf_counter()
    res = Result(v, arch)
    try:
        src = ASTSource(v.kernel, v.signature, v.constexprs, v.attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=v.options)
    except Exception as e:  # a compile error of any kind is this check's finding
        res.error = f"compile error: {type(e).__name__}: {str(e).strip()[:2000]}"
        res.seconds = time.perf_counter() - t0
        return res
    res.shared = compiled.metadata.shared
    res.usage = resource_usage(compiled.asm["cubin"])
    if res.shared > limit:
        res.error = f"shared memory {res.shared} B > sm_{arch} per-block limit {limit} B"
    res.seconds = time.perf_counter() - t0
    return res


def describe(v: Variant) -> str:
    consts = ", ".join(f"{v.kernel.arg_names[k[0]]}={c}" for k, c in sorted(v.constexprs.items())
                       if v.signature.get(v.kernel.arg_names[k[0]]) == "constexpr")
    ptrs = ",".join(t[1:] for t in v.signature.values() if t.startswith("*"))
    return f"[{ptrs}] {consts} warps={v.options.get('num_warps')} stages={v.options.get('num_stages')}"


_POOL_VARIANTS: list = []  # (variant, arch) of this run, read by forked workers by index


def _compile_job(i: int, smem_limit: int | None):
    v, arch = _POOL_VARIANTS[i]
    r = compile_variant(v, arch, smem_limit)
    return r.error, r.shared, r.usage, r.seconds


def compile_all(jobs: list, smem_limit: int | None, workers: int) -> list[Result]:
    """Results of compiling (variant, arch) jobs, on `workers` forked processes (the variants, holding jit
    functions, are inherited, not pickled)."""
    _POOL_VARIANTS[:] = jobs
    if workers <= 1:
        return [compile_variant(v, arch, smem_limit) for v, arch in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    results = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_compile_job, i, smem_limit) for i in range(len(jobs))]
        for (v, arch), fut in zip(jobs, futures):
            try:
                results.append(Result(v, arch, *fut.result()))
            except BrokenProcessPool:  # a compiler crash (abort, segfault) takes its worker, and the pool, down
                results.append(Result(v, arch, "compiler crashed (a worker died) during this or another compile"))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, action="append", choices=ARCHS, help="compute capability (default: all)")
    ap.add_argument("--shapes", default="all", choices=("all", "test", "mdt"))
    ap.add_argument("--kernel", action="append", help="only kernels of these names")
    ap.add_argument("--op", action="append", help="only calls of these ops (e.g. gather_tokens, adan_step)")
    ap.add_argument("--dtype", action="append", choices=list(DTYPES), help="only these dtypes (not adan_step's)")
    ap.add_argument("--smem-limit", type=int, help="override the per-block shared memory limit (bytes), for tests")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    ap.add_argument("--dry-run", action="store_true", help="count the variants, compile nothing")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every variant, not only failures and spills")
    args = ap.parse_args(argv)
    archs = args.arch or list(ARCHS)

    t0 = time.perf_counter()
    torch.manual_seed(0)
    by_arch = record_variants(args.shapes, archs, args.kernel, args.op, args.dtype)
    kernels = sorted({v.name for vs in by_arch.values() for v in vs})
    if not kernels:
        print(f"no launches of {args.kernel}", file=sys.stderr)
        return 2
    counts = ", ".join(f"sm_{a}: {len(vs)} variants" for a, vs in by_arch.items())
    print(f"triton {triton.__version__}, torch {torch.__version__}: op calls recorded in "
          f"{time.perf_counter() - t0:.1f}s; {counts} of {len(kernels)} kernels")
    if args.dry_run:
        for arch, vs in by_arch.items():
            print(f"sm_{arch}: " + ", ".join(f"{n} {sum(v.name == n for v in vs)}" for n in kernels))
        return 0

    t1 = time.perf_counter()
    jobs = [(v, arch) for arch, vs in by_arch.items() for v in vs]
    with tempfile.TemporaryDirectory(prefix="triton-aot-cache-") as cache, \
            mock.patch.dict(os.environ, {"TRITON_CACHE_DIR": cache}), \
            mock.patch.object(triton.knobs.cache, "dir", cache):
        results = compile_all(jobs, args.smem_limit, args.jobs)
    report(results, kernels, archs, args.smem_limit, args.verbose)
    failed = [r for r in results if not r.ok]
    missing = _missing_kernels(kernels) if not (args.kernel or args.op or args.dtype) else []
    print(f"\n{len(results)} compiles ({sum(r.seconds for r in results):.0f}s of compile time on {args.jobs} "
          f"processes: {time.perf_counter() - t1:.1f}s), {len(failed)} failed; total {time.perf_counter() - t0:.1f}s")
    if missing:
        print(f"FAIL: Triton kernels of mdt_kernels that no op call launched: {', '.join(missing)}")
    return 1 if failed or missing else 0


def report(results, kernels: list[str], archs: list[int], smem_limit: int | None, verbose: bool) -> None:
    """Prints each failed or spilling compile (every compile with verbose), then per kernel and arch the largest
    shared memory and register count, and any spills."""
    for r in results:
        v, spill = r.variant, r.usage.get("STACK", 0) or r.usage.get("LOCAL", 0)
        if not r.ok or spill or verbose:
            status = "FAIL" if not r.ok else "SPILL" if spill else "ok"
            print(f"{status:5} sm_{r.arch} {v.name} {describe(v)} smem={r.shared} regs={r.usage.get('REG')} "
                  f"stack={r.usage.get('STACK')} local={r.usage.get('LOCAL')} ({r.seconds:.1f}s)")
            print(f"      used by: {'; '.join(v.where[:3])}{' ...' if len(v.where) > 3 else ''}")
            if r.error:
                print(f"      {r.error}")

    print(f"\n{'kernel':30} {'arch':5} {'variants':>8} {'max smem B':>10} {'limit B':>7} {'max regs':>8} "
          f"{'max stack B':>11}")
    for name in kernels:
        for arch in archs:
            rs = [r for r in results if r.variant.name == name and r.arch == arch]
            if rs:
                print(f"{name:30} sm_{arch:<2} {len(rs):8} {max(r.shared for r in rs):10} "
                      f"{smem_limit or SMEM_LIMIT[arch]:7} {max(r.usage.get('REG', 0) for r in rs):8} "
                      f"{max(r.usage.get('STACK', 0) for r in rs):11}")


def _missing_kernels(launched: list[str]) -> list[str]:
    """Launchable Triton kernels (module-level jit functions named _*_kernel) in mdt_kernels.ops that the
    recorded op calls never launched: a new kernel must get a case here."""
    import importlib
    import pkgutil

    import mdt_kernels.ops as ops_pkg

    found = set()
    for mod in pkgutil.iter_modules(ops_pkg.__path__):
        module = importlib.import_module(f"mdt_kernels.ops.{mod.name}")
        found |= {n for n, obj in vars(module).items() if isinstance(obj, JITFunction) and n.endswith("_kernel")}
    return sorted(found - set(launched))


if __name__ == "__main__":
    sys.exit(main())
