#!/usr/bin/env bash
# Sets up the GPU machine's software stack (.ci/device-stack.env) on a CPU machine, as the device runs it:
# its Python and torch/torchvision/triton releases in a venv of their own, pydantic and its needs as cp312
# wheels in .whl/ (what a GPU machine without network is given, docs/gpu_check.md) installed with
# `pip --no-deps --target`, the kernels built in place, the package imported from the tree through
# PYTHONPATH (nothing of it pip-installed). Source it:
#
#     source .ci/device-stack.sh     # then: "$DEVICE_PY" -m pytest -q
#
# It exports DEVICE_PY (that venv's python) and PYTHONPATH. The venv lives outside the tree (it must never
# be copied to a GPU machine with the checkout: ~3 GB) in $FASTTRICK_DEVICE_VENV, default ~/.cache/fasttrick/device-stack; a rerun
# reuses it when its versions still match the file.

_device_stack() {
  local root venv site py start
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  # shellcheck disable=SC1091
  . "$root/.ci/device-stack.env" || return 1
  venv="${FASTTRICK_DEVICE_VENV:-$HOME/.cache/fasttrick/device-stack}"
  site="$venv/carried"

  py="$(command -v "python$DEVICE_PYTHON" 2>/dev/null)"
  if ! "$py" --version >/dev/null 2>&1 && [[ "$py" == */shims/* ]]; then
    # A pyenv shim for a version that is installed but not selected fails; take that version's own binary
    # (from the shim's folder, not `pyenv root`, which follows $HOME).
    py="$(ls -d "${py%/shims/*}/versions/$DEVICE_PYTHON".*/bin/python"$DEVICE_PYTHON" 2>/dev/null | tail -n 1)"
  fi
  if ! "$py" --version >/dev/null 2>&1; then
    echo "device stack: python$DEVICE_PYTHON not found; install it (pyenv install $DEVICE_PYTHON) or put it on PATH"
    return 1
  fi

  if ! "$venv/bin/python" -c "
import sys, torch, torchvision, triton
want = ('$DEVICE_PYTHON', '$DEVICE_TORCH', '$DEVICE_TORCHVISION', '$DEVICE_TRITON')
have = ('%d.%d' % sys.version_info[:2], torch.__version__.split('+')[0], torchvision.__version__.split('+')[0], triton.__version__)
sys.exit(have != want)" 2>/dev/null; then
    rm -rf "$venv"
    "$py" -m venv "$venv" || return 1
    start=$(date +%s)
    echo "device stack: installing torch==$DEVICE_TORCH torchvision==$DEVICE_TORCHVISION triton==$DEVICE_TRITON into $venv"
    # The registry's default torch wheel for Linux is the CUDA $DEVICE_TORCH_CUDA build, as on the device.
    # shellcheck disable=SC2086  # DEVICE_PRESENT is a list of requirements
    "$venv/bin/python" -m pip install -q --no-cache-dir "torch==$DEVICE_TORCH" "torchvision==$DEVICE_TORCHVISION" \
      "triton==$DEVICE_TRITON" $DEVICE_PRESENT || return 1
    echo "device stack: installed in $(($(date +%s) - start)) s, $(du -sh "$venv" | cut -f1) on disk"
  fi

  # The wheels the GPU machine lacks, fetched for its platform as docs/gpu_check.md fetches them.
  local platforms=() p
  for p in $DEVICE_WHEEL_PLATFORMS; do platforms+=(--platform "$p"); done
  rm -rf "$root/.whl" "$site"
  # shellcheck disable=SC2086  # DEVICE_CARRIED is a list of requirements
  "$venv/bin/python" -m pip download -q --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
    "${platforms[@]}" -d "$root/.whl" $DEVICE_CARRIED || return 1
  "$venv/bin/python" -m pip install -q --no-index --no-deps --target "$site" "$root"/.whl/*.whl || return 1
  echo "device stack: carried wheels: $(cd "$root/.whl" && ls | tr '\n' ' ')($(du -sh "$root/.whl" | cut -f1))"

  DEVICE_PY="$venv/bin/python"
  export DEVICE_PY PYTHONPATH="$site:$root/src"
  "$root/.ci/build-inplace.sh" "$DEVICE_PY" || return 1
  "$DEVICE_PY" -c "import sys, torch, triton, pydantic; print('device stack: python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| pydantic', pydantic.__version__)"
}

_device_stack
_device_stack_status=$?
unset -f _device_stack
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return $_device_stack_status
fi
exit $_device_stack_status
