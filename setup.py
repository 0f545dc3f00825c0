"""Builds fasttrick's C++/CUDA extensions; all metadata lives in pyproject.toml.

Two independent extension modules register kernels for the one op schema defined in
src/fasttrick/ops/library.py:
  fasttrick._C       CPU kernel  (csrc/sgdw_cpu.cpp)
  fasttrick._C_cuda  CUDA kernel (csrc/sgdw_cuda.cu), built when nvcc and a CUDA build of torch are found

Environment variables:
  FASTTRICK_SKIP_CPU_EXT=1    do not build fasttrick._C
  FASTTRICK_SKIP_CUDA_EXT=1   do not build fasttrick._C_cuda
  TORCH_CUDA_ARCH_LIST        CUDA architectures (default here: DEFAULT_CUDA_ARCH_LIST below; a value you
                              set wins; torch's own default would probe the build machine's GPU)
  MAX_JOBS                    parallel compile jobs (ninja) and nvcc's --threads for the CUDA targets
A missing extension never breaks `import fasttrick`: the Python side JIT-builds it with ninja on
first use, or falls back to the Triton / foreach backends.
"""

import os

from setuptools import setup

# SASS for the GPUs people train on: A100/A30 (8.0), RTX 30xx/A10/A40 (8.6), RTX 40xx/L4/L40 (8.9),
# H100/H200 (9.0); PTX of 9.0 lets the driver JIT-compile for newer ones (B200, RTX 50xx) instead of
# failing with "no kernel image is available". The five targets cost ~130 CPU-seconds to build (measured on
# the 2-core dev machine; one target alone ~45 s, most of it the host-side compile).
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"

ext_modules = []
cmdclass = {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # building without torch: pure-Python install, JIT at first use
    print(f"fasttrick: torch not importable at build time ({exc}); skipping the C++/CUDA extensions")
else:
    cxx_flags = ["-O3"]  # torch adds its own -std (C++17 up to 2.9, C++20 since)
    if not _flag("FASTTRICK_SKIP_CPU_EXT"):
        # -fopenmp: at::parallel_for is header code that runs serially unless _OPENMP is defined.
        ext_modules.append(
            CppExtension(
                "fasttrick._C",
                ["csrc/sgdw_cpu.cpp"],
                extra_compile_args={"cxx": [*cxx_flags, "-fopenmp"]},
                extra_link_args=["-fopenmp"],
            )
        )
    if not _flag("FASTTRICK_SKIP_CUDA_EXT") and CUDA_HOME is not None and torch.version.cuda is not None:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        ext_modules.append(
            CUDAExtension(
                "fasttrick._C_cuda",
                ["csrc/sgdw_cuda.cu"],
                depends=["csrc/sgdw_multi_tensor.h", "csrc/sgdw_math.h", "csrc/sgdw_checks.h"],
                # --threads: nvcc compiles the 5 targets (4 SASS + 1 PTX) of the one .cu file in parallel,
                # as many at once as MAX_JOBS allows (0 = one per CPU); ninja alone would use one core.
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--threads", os.environ.get("MAX_JOBS", "0")]},
            )
        )
    elif not _flag("FASTTRICK_SKIP_CUDA_EXT"):
        print("fasttrick: no CUDA toolkit (CUDA_HOME) or CPU-only torch; skipping fasttrick._C_cuda")
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
