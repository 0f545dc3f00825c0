#!/usr/bin/env bash
# The one-call GPU check of ../shared/GPU.md: machine, build, GPU tests, benchmarks, a real training
# grid, and the summary table last (a device reply only carries the end of the output).
#
#   OUT=<folder> bash benchmarks/gpu_check.sh [--steps build,tests,bench,train]   on the device machine
#   OUT=<folder> bash benchmarks/gpu_check.sh --dry-run                           CPU, shortened; CI runs it
#
# On the device, from the repo root, with CIFAR-10 carried as .data/cifar10-jpeg.tar.xz and the wheels
# the device lacks (pydantic, pydantic-core, annotated-types, typing-inspection; cp312) as .whl/*.whl:
#   run(carry=[".data", ".whl"], command="python3 -m pip install -q --no-index --no-deps --target /tmp/site
#       .whl/*.whl && export PYTHONPATH=/tmp/site && OUT=$OUT bash benchmarks/gpu_check.sh")
# All four steps take roughly 10 minutes (estimate, not yet measured): split them over two calls with
# --steps if one call's limit is near. Results land in $OUT: env.txt, build.log, tests.log, bench.json,
# bench.log, group2/ (grid.yaml, summary.md, summary.csv, plots/), summary.txt.
set -uo pipefail

dry_run=0
steps="build,tests,bench,train"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --steps) steps="$2"; shift ;;
    *) echo "usage: OUT=<folder> bash benchmarks/gpu_check.sh [--dry-run] [--steps build,tests,bench,train]"; exit 2 ;;
  esac
  shift
done
: "${OUT:?set OUT to the folder that receives the results}"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
failed=()
wants() { [[ ",$steps," == *",$1,"* ]]; }
section() { printf '\n===== %s =====\n' "$*"; }

section "machine"
if [ "$dry_run" = 1 ]; then
  echo "dry run: CPU only, shortened selections, no build (the package is installed)"
else
  nvidia-smi || failed+=("nvidia-smi")
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  [ -f .data/cifar10-jpeg.tar.xz ] && export FASTTRICK_DATA="$PWD/.data/cifar10-jpeg.tar.xz"
  export FASTTRICK_CACHE="${FASTTRICK_CACHE:-/tmp/fasttrick-cache}"
  if wants build; then
    # The device's Python and torch differ from a dev machine's: build the kernels there, import from the tree.
    section "build (CUDA sm_90 + CPU kernels)"
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
    export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
    if ! "$py" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
      failed+=("build")
      tail -n 30 "$OUT/build.log"
    fi
  fi
fi
"$py" -m fasttrick.env | tee "$OUT/env.txt" || failed+=("env")

if wants tests; then
  section "tests"
  if [ "$dry_run" = 1 ]; then
    test_selection=(tests/test_sgdw_op.py -k "opcheck or launch")
  else
    test_selection=(tests)
  fi
  "$py" -m pytest "${test_selection[@]}" -q -p no:cacheprovider >"$OUT/tests.log" 2>&1 || failed+=("tests")
  tail -n 15 "$OUT/tests.log"
fi

if wants bench; then
  section "benchmarks"
  if [ "$dry_run" = 1 ]; then
    bench_selection=(benchmarks/test_bench_optim.py -k "resnet18 or copy")
  else
    bench_selection=(benchmarks/)
  fi
  "$py" -m pytest "${bench_selection[@]}" --benchmark-only --benchmark-json="$OUT/bench.json" -q -p no:cacheprovider \
    >"$OUT/bench.log" 2>&1 || failed+=("benchmarks")
  tail -n 5 "$OUT/bench.log"
fi

if wants train; then
  # group2 (quick profile) end to end, compile included; its checkpoints (~90 MB each) stay out of $OUT.
  if [ "$dry_run" = 1 ]; then
    grid=(--config configs/smoke.yaml --only "fused_sgdw*" --epochs 2 --set data.train_subset=1024 --set data.test_subset=512)
    name=smoke
  else
    grid=(--config configs/group2.yaml)
    name=group2
  fi
  section "training: $name"
  runs="$(mktemp -d)"
  start=$(date +%s)
  "$py" -m fasttrick.train "${grid[@]}" --out "$runs/$name" --no-bar >"$OUT/train.log" 2>&1 || failed+=("training")
  echo "$name: $(( $(date +%s) - start )) s wall, compile included"
  tail -n 5 "$OUT/train.log"
  mkdir -p "$OUT/$name"
  cp -r "$runs/$name"/{grid.yaml,summary.md,summary.csv,plots} "$OUT/$name/" 2>/dev/null || failed+=("training results")
fi

section "summary"
{
  "$py" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
  [ -f "$OUT/bench.json" ] && "$py" benchmarks/summarize.py "$OUT/bench.json"
  for summary in "$OUT"/*/summary.md; do
    [ -f "$summary" ] && sed -n '1,20p' "$summary"
  done
} | tee "$OUT/summary.txt"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (logs in $OUT)"
  exit 1
fi
echo "gpu_check: all steps passed"
