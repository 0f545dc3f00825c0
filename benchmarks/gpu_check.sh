#!/usr/bin/env bash
# The one-call GPU check of ../shared/GPU.md: machine, build, GPU tests, benchmarks, and the summary
# table last (a device reply only carries the end of the output).
#
#   OUT=<folder> bash benchmarks/gpu_check.sh             on the device machine (builds the kernels there)
#   OUT=<folder> bash benchmarks/gpu_check.sh --dry-run   the same steps on a CPU, shortened; CI runs it
#
# On the device, run from the repo root with CIFAR-10 carried as .data/cifar10-jpeg.tar.xz (GPU.md).
# Results land in $OUT: env.txt, build.log, tests.log, bench.json, bench.log, summary.txt.
set -uo pipefail

dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
: "${OUT:?set OUT to the folder that receives the results}"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
failed=()

section() { printf '\n===== %s =====\n' "$*"; }

section "machine"
if [ "$dry_run" = 1 ]; then
  echo "dry run: CPU only, shortened test and benchmark selection"
else
  nvidia-smi || failed+=("nvidia-smi")
  # The device's Python differs from a dev machine's: build the kernels here, import from the tree.
  section "build (CUDA sm_90 + CPU kernels)"
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
  if ! "$py" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    failed+=("build")
    tail -n 30 "$OUT/build.log"
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  [ -f .data/cifar10-jpeg.tar.xz ] && export FASTTRICK_DATA="$PWD/.data/cifar10-jpeg.tar.xz"
fi
"$py" -m fasttrick.env | tee "$OUT/env.txt" || failed+=("env")

section "tests"
if [ "$dry_run" = 1 ]; then
  test_selection=(tests/test_sgdw_op.py -k "opcheck or launch")
else
  test_selection=(tests)
fi
"$py" -m pytest "${test_selection[@]}" -q -p no:cacheprovider >"$OUT/tests.log" 2>&1 || failed+=("tests")
tail -n 15 "$OUT/tests.log"

section "benchmarks"
if [ "$dry_run" = 1 ]; then
  bench_selection=(benchmarks/test_bench_optim.py -k "resnet18 or copy")
else
  bench_selection=(benchmarks/)
fi
"$py" -m pytest "${bench_selection[@]}" --benchmark-only --benchmark-json="$OUT/bench.json" -q -p no:cacheprovider \
  >"$OUT/bench.log" 2>&1 || failed+=("benchmarks")
tail -n 5 "$OUT/bench.log"

section "summary"
{
  "$py" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
  "$py" benchmarks/summarize.py "$OUT/bench.json"
} | tee "$OUT/summary.txt" || failed+=("summary")
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (logs in $OUT)"
  exit 1
fi
echo "gpu_check: all steps passed"
