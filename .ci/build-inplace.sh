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
  # The toolkit holding the nvcc on PATH; a bare nvcc copied outside its toolkit (as /usr/local/bin/nvcc on the
  # dev machine) has no headers beside it, so /usr/local/cuda is the second candidate.
  nvcc_path="$(command -v nvcc || true)"
  for candidate in ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"} /usr/local/cuda; do
    if [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/cuda_runtime.h" ]; then
      CUDA_HOME="$candidate"
      break
    fi
  done
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
  echo "build: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1))"
else
  echo "build: no nvcc on PATH or in /usr/local/cuda: the CUDA extension is skipped"
fi

# build <cpu|cuda> <env...>: setup.py build_ext --inplace for one extension, logged to $BUILD_LOG_DIR when set.
build() {
  local name="$1"
  shift
  if [ -n "${BUILD_LOG_DIR:-}" ]; then
    env "$@" "$py" setup.py build_ext --inplace >"$BUILD_LOG_DIR/build-$name.log" 2>&1 && return 0
    tail -n 20 "$BUILD_LOG_DIR/build-$name.log"
    return 1
  fi
  env "$@" "$py" setup.py build_ext --inplace
}
status=0
if ! build cpu FASTTRICK_SKIP_CUDA_EXT=1; then
  echo "build: the CPU extension FAILED"
  status=1
fi
if [ -n "${CUDA_HOME:-}" ] && ! build cuda FASTTRICK_SKIP_CPU_EXT=1; then
  echo "build: the CUDA extension FAILED"
  [ "$status" = 0 ] && status=2
fi
ls src/fasttrick/_C*.so 2>/dev/null | sed 's/^/build: /'
exit "$status"
