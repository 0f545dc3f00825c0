"""Where the CUDA toolkit is, for the kernel builds (setup.py loads this file by path) and the JIT build.

torch guesses CUDA_HOME as the parent of `which nvcc`'s folder; with a wrapper script such as /usr/local/bin/nvcc
that is /usr/local, where no libcudart is, and the link fails. nvcc's own --dryrun prints its real toolkit
(`#$ TOP=...`). Standard library only: setup.py runs this before torch's cpp_extension is imported.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def find_cuda_home() -> str | None:
    """CUDA_HOME (or CUDA_PATH) when set; else the toolkit of the nvcc on PATH; else /usr/local/cuda; else None."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
            top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
            if top:
                candidates.append(Path(top.group(1).strip()).resolve())
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(Path(nvcc).resolve().parents[1])
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None
