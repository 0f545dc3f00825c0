#!/usr/bin/env bash
# Builds fasttrick's kernels in place (src/fasttrick/_C*.so) with the Python given as $1 (default python3), the
# way the device machine runs the package: imported from the tree, not installed. The CPU and CUDA extensions
# are built by separate commands, so a failed CUDA build keeps the CPU kernel (without it `auto` would fall
# back to the 0.27x foreach step). CUDA_HOME comes from the nvcc on PATH (where it lives on the device is not
# known), else /usr/local/cuda. Logs: $BUILD_LOG_DIR/build-{cpu,cuda}.log when set, else the terminal.
# Exit status: 0 both built (or CUDA skipped: no nvcc), 1 CPU failed, 2 only CUDA failed.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"

if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_path="$(command -v nvcc || true)"
  if [ -n "$nvcc_path" ]; then
    CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_HOME=/usr/local/cuda
  fi
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
  echo "build: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1))"
else
  echo "build: no nvcc on PATH or in /usr/local/cuda: the CUDA extension is skipped"
fi

log() {
  if [ -n "${BUILD_LOG_DIR:-}" ]; then echo "$BUILD_LOG_DIR/build-$1.log"; else echo /dev/stdout; fi
}
status=0
if ! FASTTRICK_SKIP_CUDA_EXT=1 "$py" setup.py build_ext --inplace >"$(log cpu)" 2>&1; then
  echo "build: the CPU extension FAILED ($(log cpu))"
  [ -n "${BUILD_LOG_DIR:-}" ] && tail -n 20 "$(log cpu)"
  status=1
fi
if [ -n "${CUDA_HOME:-}" ] && ! FASTTRICK_SKIP_CPU_EXT=1 "$py" setup.py build_ext --inplace >"$(log cuda)" 2>&1; then
  echo "build: the CUDA extension FAILED ($(log cuda))"
  [ -n "${BUILD_LOG_DIR:-}" ] && tail -n 20 "$(log cuda)"
  [ "$status" = 0 ] && status=2
fi
ls src/fasttrick/_C*.so 2>/dev/null | sed 's/^/build: /'
exit "$status"
