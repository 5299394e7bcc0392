"""Builds mdt_kernels._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

Environment switches:
  MDT_KERNELS_CUDA=1|0   force the CUDA build on (fails if impossible) or off; default: auto.
  MDT_KERNELS_CUDA_ARCHS e.g. "8.0;9.0" (default: TORCH_CUDA_ARCH_LIST, else "8.0;9.0").
  MDT_KERNELS_CPU_ARCH   -march value for the CPU kernels (default "native"; "generic" for portable wheels).
  DEBUG=1                -O0 -g.
"""

import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("MDT_KERNELS_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("1", "true", "on"):
        if not possible:
            raise RuntimeError(
                f"MDT_KERNELS_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc was not found (CUDA_HOME={CUDA_HOME})"
            )
        return True
    if flag in ("0", "false", "off"):
        return False
    return possible


def _extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    arch = os.environ.get("MDT_KERNELS_CPU_ARCH", "native")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math: nothing here reads floating-point exception flags, and with it GCC vectorises
    # loops that round (the softmax's exp in rel_pos_attention); results are unchanged.
    cxx += ["-fopenmp", "-fno-trapping-math"] + ([] if arch == "generic" else [f"-march={arch}"])
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    kwargs = dict(
        name="mdt_kernels._C",
        include_dirs=[os.path.join(HERE, "csrc", "include")],
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    cxx += ["-DPy_LIMITED_API=0x030A0000"]
    if _want_cuda():
        archs = os.environ.get("MDT_KERNELS_CUDA_ARCHS", os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0"))
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")) + glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "--use_fast_math"]
        nvcc += ["--expt-relaxed-constexpr"]
        return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx + ["-DMDT_WITH_CUDA"], "nvcc": nvcc}, **kwargs)
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
