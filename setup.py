"""Builds fasttrick's C++/CUDA extensions; metadata lives in pyproject.toml, the build backend (which makes the
installed torch importable here, so the kernels are built against the torch that will run them) in
build_backend/fasttrick_build.py.

Two independent extension modules register kernels for the one op schema defined in
src/fasttrick/ops/library.py:
  fasttrick._C       CPU kernel  (csrc/sgdw_cpu.cpp)
  fasttrick._C_cuda  CUDA kernel (csrc/sgdw_cuda.cu), built when nvcc and a CUDA build of torch are found

A kernel that cannot be built is skipped with a warning, never failing an install (`setup.py build_ext
--inplace`, kernel work, does fail); each attempted kernel
leaves a record beside it (fasttrick/<module>.build.json: the torch it was built against, or why it was not
built), which fasttrick._backend reads before loading it. The study configs (configs/*.yaml at the root of
the checkout) ship inside the package as fasttrick/configs.

Environment variables:
  FASTTRICK_SKIP_CPU_EXT=1    do not build fasttrick._C
  FASTTRICK_SKIP_CUDA_EXT=1   do not build fasttrick._C_cuda
  CUDA_HOME                   the CUDA toolkit; when unset, the one holding the nvcc on PATH (asked with
                              `nvcc --dryrun`, which also sees through wrapper scripts), else /usr/local/cuda
  TORCH_CUDA_ARCH_LIST        CUDA architectures (default here: DEFAULT_CUDA_ARCH_LIST below; a value you
                              set wins; torch's own default would probe the build machine's GPU)
  MAX_JOBS                    parallel compile jobs (ninja) and nvcc's --threads for the CUDA targets
A missing extension never breaks `import fasttrick`: the Python side JIT-builds it with ninja on
first use (in a checkout), or falls back to the Triton / foreach backends.
"""

import json
import os
import runpy
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build import build

# SASS for the GPUs people train on: A100/A30 (8.0), RTX 30xx/A10/A40 (8.6), RTX 40xx/L4/L40 (8.9),
# H100/H200 (9.0); PTX of 9.0 lets the driver JIT-compile for newer ones (B200, RTX 50xx) instead of
# failing with "no kernel image is available". The five targets cost ~130 CPU-seconds to build (measured on
# the 2-core dev machine; one target alone ~45 s, most of it the host-side compile).
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"
SKIP_HINT = {"fasttrick._C": "FASTTRICK_SKIP_CPU_EXT=1", "fasttrick._C_cuda": "FASTTRICK_SKIP_CUDA_EXT=1"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def _warn(message: str) -> None:
    # setup.py also runs for pip's metadata and requirement queries (egg_info, dist_info): warn once, when building.
    if {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"} & set(sys.argv[1:]):
        print(f"WARNING fasttrick: {message}", file=sys.stderr, flush=True)


class CleanBuild(build):
    """Starts every wheel from an empty build/lib: a kernel left there by an earlier build (a _C_cuda built
    before FASTTRICK_SKIP_CUDA_EXT=1 was set) would otherwise be packed into this wheel."""

    def run(self):
        if os.path.isdir(self.build_lib):
            shutil.rmtree(self.build_lib)
        super().run()


packages = find_packages("src")
package_dir = {"": "src", "fasttrick.configs": "configs"}
ext_modules = []
cmdclass = {"build": CleanBuild}
# The toolkit search, shared with the JIT build (fasttrick._backend); by path: the package is not importable here.
cuda_home = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "src/fasttrick/_toolkit.py"))[
    "find_cuda_home"
]()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension when imported, below

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # building without torch: pure-Python install, JIT at first use in a checkout
    _warn(
        f"torch not importable at build time ({exc}); the C++/CUDA kernels are not built. Install torch first, "
        "then reinstall fasttrick (pip install --force-reinstall --no-deps <checkout>)"
    )
else:

    class RecordingBuildExtension(BuildExtension):
        """Builds each kernel; one that fails is skipped with a warning naming the fix, and every kernel
        attempted leaves <module>.build.json: the torch it was built against, or why it was not built."""

        def run(self):
            # setuptools builds into build/lib and copies into src/ afterwards (--inplace, `pip install -e`), with
            # self.inplace off meanwhile: remember where the kernels end up.
            self.into_source = bool(self.inplace) or getattr(self, "editable_mode", False)
            self.install_build = not self.inplace  # bdist_wheel or `pip install -e`, not kernel work
            super().run()

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as exc:
                # torch checks the CUDA toolkit (found, its version against torch's) before building anything; a
                # failure there is the CUDA kernel's alone: build the others without it.
                cuda = [ext for ext in self.extensions if ext.name == "fasttrick._C_cuda"]
                if not cuda:
                    raise
                self._record(cuda[0], exc)
                self.extensions = [ext for ext in self.extensions if ext not in cuda]
                super().build_extensions()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # a compiler or linker failure: the package works without this kernel
                self._record(ext, exc)
            else:
                self._record(ext, None)

        def _record(self, ext, exc: Exception | None) -> None:
            error = None
            if exc is not None:
                reason = " ".join(str(exc).split())[-300:]
                error = (
                    f"{ext.name} could not be built ({type(exc).__name__}: {reason}); to build it, set CUDA_HOME to "
                    f"a CUDA toolkit matching torch's CUDA {torch.version.cuda} (for the CUDA kernel) and reinstall "
                    f"with `pip install -v` to see the compiler; to skip it: {SKIP_HINT[ext.name]}"
                )
                _warn(error)
            folders = {Path(self.get_ext_fullpath(ext.name)).parent}
            if self.into_source:
                inplace, self.inplace = self.inplace, True
                folders.add(Path(self.get_ext_fullpath(ext.name)).parent)
                self.inplace = inplace
            text = json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "error": error})
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{ext.name.rpartition('.')[2]}.build.json").write_text(text)
            if error and not self.install_build:
                # `setup.py build_ext --inplace` is kernel work (.ci/build-inplace.sh): there a failure is the news
                raise SystemExit(f"fasttrick: {error}")

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
    elif not _flag("FASTTRICK_SKIP_CUDA_EXT") and torch.version.cuda is not None:
        _warn(
            "no CUDA toolkit found (no nvcc on PATH, no CUDA_HOME, no /usr/local/cuda): fasttrick._C_cuda is not "
            "built; set CUDA_HOME to a CUDA toolkit and reinstall to build it, or FASTTRICK_SKIP_CUDA_EXT=1 to "
            "silence this"
        )
    cmdclass["build_ext"] = RecordingBuildExtension

setup(
    packages=[*packages, "fasttrick.configs"],
    package_dir=package_dir,
    package_data={"fasttrick.configs": ["*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
