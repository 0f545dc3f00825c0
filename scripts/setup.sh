#!/usr/bin/env bash
# Sets up fasttrick for development in ./.venv: torch, the package (editable) with its C++ CPU and
# CUDA kernels, and the dev tools. Source it to stay in the environment:
#
#     source scripts/setup.sh
#
# Safe to repeat: once installed, a rerun only rebuilds when setup.py, pyproject.toml or csrc/ changed.
# Environment: PYTHON (default python3), FASTTRICK_TORCH (default "torch==2.14.1 torchvision==0.29.1"),
# CUDA_HOME (default /usr/local/cuda when nvcc is there), MAX_JOBS (default 2), and setup.py's
# FASTTRICK_SKIP_CPU_EXT / FASTTRICK_SKIP_CUDA_EXT.

_fasttrick_setup() {
  local root venv py stamp
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  venv="$root/.venv"
  py="$venv/bin/python"
  stamp="$venv/.fasttrick-installed"

  if [ ! -x "$py" ]; then
    echo "fasttrick setup: creating $venv"
    "${PYTHON:-python3}" -m venv "$venv" || return 1
  fi
  if ! "$py" -c "import torch" 2>/dev/null; then
    echo "fasttrick setup: installing ${FASTTRICK_TORCH:-torch==2.14.1 torchvision==0.29.1}"
    # shellcheck disable=SC2086  # the spec is a list of requirements
    "$py" -m pip install -q ${FASTTRICK_TORCH:-torch==2.14.1 torchvision==0.29.1} || return 1
  fi
  if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
  fi
  if [ -f "$stamp" ] && [ -z "$(find "$root/setup.py" "$root/pyproject.toml" "$root/csrc" -newer "$stamp" 2>/dev/null)" ]; then
    echo "fasttrick setup: up to date (delete $stamp to force a rebuild)"
  else
    echo "fasttrick setup: building fasttrick and its kernels (CUDA_HOME=${CUDA_HOME:-none}); about 3 minutes on 2 cores"
    # --no-build-isolation: build against the torch installed above, not a second copy of it.
    "$py" -m pip install -q "setuptools>=68" ninja || return 1
    MAX_JOBS="${MAX_JOBS:-2}" "$py" -m pip install -q --no-build-isolation -e "$root[dev]" || return 1
    touch "$stamp"
  fi
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
}

_fasttrick_setup
_fasttrick_status=$?
unset -f _fasttrick_setup
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return $_fasttrick_status  # sourced: leave the caller's shell running, inside the venv
fi
exit $_fasttrick_status
