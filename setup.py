"""Builds mdt_kernels._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

Environment switches:
  MDT_KERNELS_CUDA=1|0   force the CUDA build on (fails if impossible) or off; default: auto.
  MDT_KERNELS_CUDA_ARCHS e.g. "8.0;9.0" (default: TORCH_CUDA_ARCH_LIST, else "8.0;9.0;10.0+PTX": A100, H100,
                         B200, and PTX that newer GPUs compile at load time).
  MDT_KERNELS_CPU_ARCH   -march value for every CPU source (default: none, a portable build whose
                         vectorised kernels are compiled once per instruction set and chosen when the
                         extension loads, csrc/cpu/isa.h); "native" for a build that only this CPU runs.
  DEBUG=1                -O0 -g.
"""

import glob
import os
import platform
import re
import shutil
import subprocess

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension
from torch.utils.cpp_extension import BuildExtension as TorchBuildExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("MDT_KERNELS_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "true", "on"):
        if not possible:
            raise RuntimeError(
                f"MDT_KERNELS_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc was not found "
                f"(CUDA_HOME={CUDA_HOME})"
            )
        return True
    if flag in ("0", "false", "off"):
        return False
    return possible


# The vectorised CPU kernels (csrc/cpu/vec/*.cpp) are compiled once per instruction set, with the flags
# ATen's at::vec expects for it (CPU_CAPABILITY names the inline namespace of each copy); csrc/cpu/isa.h
# picks one at run time. Lowest first: that is also the link order (see isa.h).
VEC_SOURCES = sorted(glob.glob(os.path.join("csrc", "cpu", "vec", "*.cpp")))
CAPABILITIES = {
    "x86_64": [
        ("DEFAULT", []),
        ("AVX2", ["-mavx2", "-mfma", "-mf16c"]),
        ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]),
    ],
    # SVE at exactly 256 bits (Graviton3), as ATen's SVE256 kernels; 128-bit SVE CPUs (Grace) run NEON.
    "aarch64": [
        ("DEFAULT", []),
        ("SVE256", ["-march=armv8.2-a+sve", "-msve-vector-bits=256", "-DCPU_CAPABILITY_SVE"]),
    ],
}.get(platform.machine().lower().replace("amd64", "x86_64"), [("DEFAULT", [])])


def _check_static_initialisers(objects: list[str], capability: str) -> None:
    """A capability object's static initialisers run when the extension loads, on any CPU: fail the build
    if one uses a vector instruction (x86-64: VEX/EVEX-encoded, or ymm/zmm/mask registers; aarch64: SVE's
    z/p registers). at::vec's headers include <iostream>, whose initialiser is a plain call."""
    objdump = shutil.which("objdump")
    machine = platform.machine().lower()
    if capability == "DEFAULT" or objdump is None or machine not in ("x86_64", "amd64", "aarch64"):
        return
    vector = r"\b[zp]\d+\." if machine == "aarch64" else r"%[yz]mm|%k[0-7]\b|:\s+v[a-z]"
    for obj in objects:
        asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", obj], capture_output=True, text=True,
                             check=True).stdout
        for func in re.findall(r"^[0-9a-f]+ <(_GLOBAL__sub_I[^>]*)>:\n(.*?)(?:\n\n|\Z)", asm, re.S | re.M):
            name, body = func
            bad = [line for line in body.splitlines()
                   if re.search(vector, line)]
            if bad:
                raise RuntimeError(f"{obj}: the static initialiser {name} of the {capability} kernels uses vector "
                                   f"instructions that older CPUs lack, and runs when the extension loads: {bad[:3]}")


class BuildExtension(TorchBuildExtension):
    """torch's BuildExtension, plus the per-instruction-set objects of VEC_SOURCES linked into _C."""

    def copy_file(self, infile, outfile, *args, **kwargs):
        # An in-place (editable) build replaces the library under mdt_kernels/ with a new file rather than
        # rewriting it: a process that has the old one loaded (a training run) keeps its pages and runs on.
        if str(outfile).endswith((".so", ".pyd")) and os.path.isfile(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)

    def build_extension(self, ext):
        if ext.name != "mdt_kernels._C":
            return super().build_extension(ext)
        flags = ext.extra_compile_args
        base = list(flags["cxx"] if isinstance(flags, dict) else flags)
        objects = []
        for capability, isa_flags in CAPABILITIES:
            post = base + isa_flags + [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
            # at::vec's headers: CUDA's `#pragma unroll`; GCC 12 warns on its own AVX-512 intrinsics.
            post += ["-Wno-unknown-pragmas", "-Wno-uninitialized", "-Wno-maybe-uninitialized"]
            objs = self.compiler.compile(
                VEC_SOURCES,
                output_dir=os.path.join(self.build_temp, "isa", capability.lower()),
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs={"cxx": post, "nvcc": []} if isinstance(flags, dict) else post,
                depends=ext.depends,
            )
            _check_static_initialisers(objs, capability)
            objects += objs
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def _extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    arch = os.environ.get("MDT_KERNELS_CPU_ARCH", "")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math: nothing here reads floating-point exception flags, and with it GCC vectorises
    # loops that round (the softmax's exp in rel_pos_attention); results are unchanged.
    cxx += ["-fopenmp", "-fno-trapping-math"] + ([] if arch in ("", "generic") else [f"-march={arch}"])
    cxx += [f"-DMDT_CPU_CAPABILITY_{name}" for name, _ in CAPABILITIES if name != "DEFAULT"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    kwargs = dict(
        name="mdt_kernels._C",
        include_dirs=[os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc", "cpu")],
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    cxx += ["-DPy_LIMITED_API=0x030A0000"]
    if _want_cuda():
        archs = os.environ.get("MDT_KERNELS_CUDA_ARCHS", os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0;10.0+PTX"))
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
                          + glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "--use_fast_math"]
        nvcc += ["--expt-relaxed-constexpr"]
        return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx + ["-DMDT_WITH_CUDA"], "nvcc": nvcc},
                             **kwargs)
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
