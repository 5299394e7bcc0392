"""Builds the test suite's CUDA simulator library: the CUDA kernels (csrc/cuda/*_kernels.cu) and their torch
bindings (csrc/cuda/<op>.cpp) compiled as host C++ against the execution layer csrc/simt, which registers
them as mdt_kernels_sim::<op> for CPU tensors (tests/cuda_sim/__init__.py loads it). `make test` runs it.

    python tests/cuda_sim/build.py           # build/cuda_sim/mdt_kernels_sim.so
    python tests/cuda_sim/build.py --asan    # build/cuda_sim_asan/: AddressSanitizer + UBSan (make test-sanitize)

It writes a ninja file (each source with its flags, header dependencies from the compiler), so a second run
compiles only what changed. The kernel files are instrumented with -fsanitize=thread for the layer's
shared-memory race check (simt.cpp implements the hooks; no TSan runtime is linked), the bindings and the
layer are not; the ASan build instruments everything and has no race check.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = "mdt_kernels_sim.so"


def build_dir(asan: bool) -> str:
    return os.path.join(ROOT, "build", "cuda_sim_asan" if asan else "cuda_sim")


def _sources() -> tuple[list[str], list[str]]:
    """(kernel files, binding files), relative to the repository root."""
    cuda = os.path.join(ROOT, "csrc", "cuda")
    simt = os.path.join(ROOT, "csrc", "simt")
    kernels = sorted(glob.glob(os.path.join(cuda, "*.cu"))) + [os.path.join(simt, "selftest_kernels.cpp")]
    bindings = sorted(glob.glob(os.path.join(cuda, "*.cpp"))) + [os.path.join(simt, "selftest.cpp")]
    return kernels, bindings


def ninja_file(asan: bool) -> str:
    import torch
    from torch.utils import cpp_extension

    csrc = os.path.join(ROOT, "csrc")
    # simt's include/ first: its cuda_runtime.h, cuda_fp16.h, cuda_bf16.h and c10/cuda headers replace CUDA's.
    includes = [os.path.join(csrc, "simt", "include"), os.path.join(csrc, "include"), os.path.join(csrc, "cuda")]
    includes += cpp_extension.include_paths()
    sanitize = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    opt = sanitize if asan else ["-O2"]
    common = ["-std=c++20", "-fPIC", *opt, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
              "-Wno-unknown-pragmas", *(f"-I{d}" for d in includes)]
    race = [] if asan else ["-DSIMT_RACECHECK_BUILD"]
    flags = {
        "kernel": common + race + ([] if asan else ["-fsanitize=thread"]),
        "layer": common + race,
        # The bindings register their kernels under the simulator's namespace, for CPU tensors.
        "binding": common + ["-DMDT_CUDA_IMPL(m)=TORCH_LIBRARY_IMPL(mdt_kernels_sim,CPU,m)"],
    }
    libs = cpp_extension.library_paths()[0]
    link = [f"-L{libs}", f"-Wl,-rpath,{libs}", "-lc10", "-ltorch_cpu", "-ltorch"]
    link += ["-fsanitize=address,undefined"] if asan else []

    kernels, bindings = _sources()
    items = [(k, "kernel") for k in kernels] + [(b, "binding") for b in bindings]
    items.append((os.path.join(csrc, "simt", "simt.cpp"), "layer"))
    cxx = os.environ.get("CXX", "c++")
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {cxx}",
        "rule cxx",
        "  command = $cxx -MMD -MF $out.d $flags -x c++ -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "rule link",
        "  command = $cxx -shared $in -o $out $ldflags",
        "  description = LINK $out",
    ]
    objects = []
    for src, kind in items:
        obj = os.path.join("obj", os.path.basename(src).replace(".", "_") + ".o")
        objects.append(obj)
        lines += [f"build {obj}: cxx {src}", f"  flags = {' '.join(shlex.quote(f) for f in flags[kind])}"]
    lines += [f"build {LIBRARY}: link {' '.join(objects)}", f"  ldflags = {' '.join(shlex.quote(f) for f in link)}"]
    return "\n".join(lines) + "\n"


def build(asan: bool = False, jobs: int | None = None) -> str:
    """Builds (or brings up to date) the library; returns its path."""
    out = build_dir(asan)
    os.makedirs(out, exist_ok=True)
    text = ninja_file(asan)
    path = os.path.join(out, "build.ninja")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    jobs = jobs or int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
    ninja = os.path.join(os.path.dirname(sys.executable), "ninja")
    subprocess.check_call([ninja if os.path.exists(ninja) else "ninja", "-C", out, "-j", str(jobs)])
    return os.path.join(out, LIBRARY)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asan", action="store_true", help="AddressSanitizer + UBSan build (make test-sanitize)")
    ap.add_argument("-j", "--jobs", type=int, help="parallel compiles (default: MAX_JOBS, else all cores)")
    args = ap.parse_args(argv)
    print(build(args.asan, args.jobs))


if __name__ == "__main__":
    main()
