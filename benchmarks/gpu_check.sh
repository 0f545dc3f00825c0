#!/usr/bin/env bash
# The GPU check: builds fasttrick on a GPU machine, runs the tests that need a GPU, measures the optimizer,
# loader and train-step benchmarks, then reruns the studies and writes their report. docs/gpu_check.md says
# how to prepare a machine, what each step measures and what to commit afterwards. From the repository root:
#
#   OUT=<folder> bash benchmarks/gpu_check.sh --part 1   # facts, build, GPU tests, benchmarks
#   OUT=<folder> bash benchmarks/gpu_check.sh --part 2   # the studies (docs/REPRODUCTION.md's order), REPORT.md
#   OUT=<folder> bash benchmarks/gpu_check.sh --dry-run  # both parts, shortened, on any machine (CPU included)
#
# Part 1 measures: machine facts (nvidia-smi, nvcc -> CUDA_HOME, versions against .ci/device-stack.env, the
# device-to-device copy bandwidth), the build (CPU and CUDA kernels separately), the tests that need a GPU
# (pytest-xdist), the optimizer, loader and train-step benchmarks (numerics checked in each). Part 2 runs the
# studies in docs/REPRODUCTION.md's priority order, as many as its time allows, packed --workers N per GPU as
# part 1 found pays, then REPORT.md; its results go out as one tar.gz (no checkpoints).
#
# Each part stays under 9 minutes, so that it fits a machine whose commands are limited to 10: every step runs
# under `timeout` with its own budget (BUDGETS below), and after every step the table (step, budget, seconds,
# status) is rewritten to $OUT/steps.txt and printed, so a part stopped from outside keeps what ran. $OUT holds
# at most 8 files (logs are packed into $OUT/logs.tar.gz after every step). Part 2 reuses part 1's build and
# packing decision when both run on the same machine (they are kept in $GPU_CHECK_STATE, /tmp by default).
set -uo pipefail

# Budgets, seconds. Estimates until a GPU measures them (docs/gpu_check.md gives each one's basis). Each part's
# sum stays under its limit, and each limit ~40 s under a 9-minute command, for installing carried wheels,
# packing the results and copying them off the machine. Both parts and one machine start (1-2 min) fit 15 min.
# bench_arrays (the K sweep of fused arrays, ~25 s of compile per K) replaced the max-autotune train step,
# which measured a compile mode the studies do not use.
declare -A BUDGETS=(
  [facts]=20 [build]=90 [tests]=60 [bench_optim]=75 [bench_loaders]=20 [bench_train]=70 [bench_arrays]=85
  [build_check]=15 [studies]=255 [report]=20
)
PART1_STEPS=(facts build tests bench_optim bench_loaders bench_train bench_arrays)
PART2_STEPS=(build_check studies report)
PART1_LIMIT=430
PART2_LIMIT=310
# Study priority (docs/REPRODUCTION.md): claims decided per epoch of training, most first.
STUDIES=(group2 lr_momentum group3 schedules l2 group1)

usage() {
  echo "usage: OUT=<folder> bash benchmarks/gpu_check.sh (--part 1|2 [--workers N] | --dry-run)"
  exit 2
}
parts=()
one_step=""
dry_run="${GPU_CHECK_DRY_RUN:-0}"
workers="${GPU_CHECK_WORKERS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --part) [ "${2:-}" = 1 ] || [ "${2:-}" = 2 ] || usage; parts=("$2"); shift ;;
    --dry-run) dry_run=1; parts=(1 2) ;;
    --workers) workers="${2:?}"; shift ;;
    --step) one_step="${2:?}"; shift ;; # internal: one step, in its own process so `timeout` can stop it
    *) usage ;;
  esac
  shift
done
[ ${#parts[@]} -gt 0 ] || [ -n "$one_step" ] || usage
: "${OUT:?set OUT to the folder that receives the results}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)" || exit 2 # absolute: the steps run from the repository root
cd "$(dirname "$0")/.."
root="$PWD"
self="$root/benchmarks/gpu_check.sh"
py="${PYTHON:-python3}"
if [ -z "$one_step" ]; then
  export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  # CIFAR-10: $FASTTRICK_DATA, else an archive carried in the checkout's .data/ (git-ignored); a GPU machine
  # often has no network for torchvision's download.
  if [ -z "${FASTTRICK_DATA:-}" ] && [ -f .data/cifar10-jpeg.tar.xz ]; then
    export FASTTRICK_DATA="$root/.data/cifar10-jpeg.tar.xz"
  fi
  echo "gpu_check: CIFAR-10 from ${FASTTRICK_DATA:-a torchvision download (FASTTRICK_DATA is unset, no .data/)}"
  # Part 1's build and packing decision, for part 2 on the same machine ($OUT may be emptied between parts).
  export GPU_CHECK_STATE="${GPU_CHECK_STATE:-/tmp/fasttrick-gpu-check}"
  [ "$dry_run" = 1 ] && GPU_CHECK_STATE="$(mktemp -d)"
  export FASTTRICK_CACHE="${FASTTRICK_CACHE:-$GPU_CHECK_STATE/cache}" GPU_CHECK_DRY_RUN="$dry_run" \
    GPU_CHECK_WORKERS="$workers"
fi
state="$GPU_CHECK_STATE"
logs="$state/logs"
mkdir -p "$logs" "$OUT"

for part in 1 2; do
  steps_var="PART${part}_STEPS[@]"
  limit_var="PART${part}_LIMIT"
  total=0
  for s in "${!steps_var}"; do total=$((total + BUDGETS[$s])); done
  if [ "$total" -gt "${!limit_var}" ] || [ "${!limit_var}" -ge 540 ]; then
    echo "gpu_check: part $part's budgets sum to $total s, over its limit ${!limit_var} s (< 540): fix BUDGETS"
    exit 2
  fi
done

table="$OUT/steps.txt"
part_start=$(date +%s)
[ -z "$one_step" ] && printf '%-15s %8s %8s %8s  %s\n' step budget_s limit_s seconds status >"$table"

# step NAME DRY_LIMIT [RESERVE]: runs the function NAME (in `gpu_check.sh --step NAME`) under timeout, with
# the real budget or DRY_LIMIT in a dry run; logs to $logs/NAME.log, appends a row to the table, packs the
# logs and prints the table. With RESERVE, the step may also use what earlier steps left of the part's limit,
# keeping RESERVE seconds for the steps after it (an estimate that was too high then buys a longer last step).
failed=()
step() {
  local name="$1" dry_limit="$2" reserve="${3:-}" limit status start seconds rc left
  limit="${BUDGETS[$name]}"
  if [ -n "$reserve" ]; then
    left=$((part_limit - ($(date +%s) - part_start) - reserve))
    [ "$left" -gt "$limit" ] && limit="$left"
  fi
  [ "$dry_run" = 1 ] && limit="$dry_limit"
  export GPU_CHECK_STEP_LIMIT="$limit"
  printf '\n===== %s (limit %s s) =====\n' "$name" "$limit"
  start=$(date +%s)
  timeout --kill-after=5 "$limit" bash "$self" --step "$name" >"$logs/$name.log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - start))
  case "$rc" in
    0) status=ok ;;
    124 | 137) status="TIMEOUT (killed at $limit s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || failed+=("$name")
  tail -n 12 "$logs/$name.log"
  printf '%-15s %8s %8s %8s  %s\n' "$name" "${BUDGETS[$name]}" "$limit" "$seconds" "$status" >>"$table"
  tar -czf "$OUT/logs.tar.gz" -C "$state" logs 2>/dev/null
  printf '\n'
  cat "$table"
  echo "part so far: $(($(date +%s) - part_start)) s"
}

# ---------------------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------------------

facts() {
  # shellcheck disable=SC1091
  . "$root/.ci/device-stack.env"
  nvidia-smi 2>/dev/null || echo "nvidia-smi: not found (no GPU here)"
  echo "nvcc on PATH: $(command -v nvcc || echo none) $(nvcc --version 2>/dev/null | tail -n 2 | head -n 1)"
  "$py" - "$DEVICE_PYTHON" "$DEVICE_TORCH" "$DEVICE_TORCHVISION" "$DEVICE_TRITON" "$DEVICE_NUMPY_MAJOR" <<'EOF'
import sys, time
import numpy, torch, torchvision, triton
want = dict(zip(("python", "torch", "torchvision", "triton", "numpy major"), sys.argv[1:], strict=True))
have = {
    "python": "%d.%d" % sys.version_info[:2],
    "torch": torch.__version__.split("+")[0],
    "torchvision": torchvision.__version__.split("+")[0],
    "triton": triton.__version__,
    "numpy major": numpy.__version__.split(".")[0],
}
print("versions:", ", ".join(f"{k} {v}" for k, v in have.items()), f"| torch CUDA {torch.version.cuda}")
for key in want:
    if have[key] != want[key]:
        print(f"WARNING: {key} is {have[key]} here, .ci/device-stack.env says {want[key]}: CI tested the file's; "
              "update .ci/device-stack.env to this machine's and rerun CI")
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
# The ceiling every optimizer figure is a fraction of: a copy of 256 M fp32 (1 GiB; 64 M on a CPU), counting
# bytes read plus written, median of 20 after 3 warm-ups.
src = torch.randn((256 if device == "cuda" else 64) * 2**20, device=device)
dst = torch.empty_like(src)
times = []
for i in range(23):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    dst.copy_(src)
    if device == "cuda":
        torch.cuda.synchronize()
    if i >= 3:
        times.append(time.perf_counter() - start)
print(f"copy bandwidth ({device}): {2 * src.nbytes / sorted(times)[len(times) // 2] / 1e9:.0f} GB/s")
EOF
}

build() {
  # Only the architecture of the card present (setup.py's default list costs one nvcc pass per architecture);
  # sm_90 where no GPU is seen (a dry run).
  local arch
  arch="$("$py" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")')"
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${arch:-9.0}}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" BUILD_LOG_DIR="$logs" \
    "$root/.ci/build-inplace.sh" "$py"
  "$py" -m fasttrick.env
}

tests() {
  local selection=(tests -k "cuda or triton or gpu")
  [ "$dry_run" = 1 ] && selection=(tests/test_sgdw_op.py -k "opcheck or launch")
  # 4 processes share the GPU (2 in a dry run, which may have 2 cores); a machine without pytest-xdist
  # runs them in one.
  local parallel=() workers=4
  [ "$dry_run" = 1 ] && workers=2
  "$py" -c "import xdist" 2>/dev/null && parallel=(-n "${TEST_WORKERS:-$workers}")
  "$py" -m pytest "${selection[@]}" -q -p no:cacheprovider "${parallel[@]}"
}

# bench FILE PYTEST-ARGS...: pytest-benchmark into $OUT/bench_FILE.json, then its table.
bench() {
  local name="$1"
  shift
  "$py" -m pytest "benchmarks/test_bench_$name.py" --benchmark-only --benchmark-json="$OUT/bench_$name.json" \
    -q -p no:cacheprovider "$@"
  local rc=$?
  [ -f "$OUT/bench_$name.json" ] && "$py" benchmarks/summarize.py "$OUT/bench_$name.json"
  return "$rc"
}

bench_optim() {
  if [ "$dry_run" = 1 ]; then
    bench optim -k "copy or (resnet18 and (fasttrick-cpu or torch-fused or torch-compiled))"
  else
    bench optim
  fi
}

bench_loaders() {
  # The CPU loaders and the cache decode are CPU figures: measured on a CPU machine, not here.
  if [ "$dry_run" = 1 ]; then bench loaders -k "torch-cpu"; else bench loaders -k "cuda"; fi
}

bench_train() {
  bench train -k "not max-autotune"
  # Packing for part 2 (a heuristic until measured): when batch 1024 runs >= 1.15x the images/s of batch 512,
  # one run at batch 512 leaves the GPU under-filled, and a second run beside it fills the gaps.
  "$py" - "$OUT/bench_train.json" "$state/workers" <<'EOF'
import json, sys
rows = {b["extra_info"]["impl"]: b["extra_info"]["images_per_s"] for b in json.load(open(sys.argv[1]))["benchmarks"]}
b512, b1024 = rows.get("fasttrick-compiled-bf16-b512"), rows.get("fasttrick-compiled-bf16-b1024")
workers = 2 if b512 and b1024 and b1024 >= 1.15 * b512 else 1
print(f"packing for part 2: {workers} run(s) per GPU (compiled bf16 images/s: b512 {b512}, b1024 {b1024})")
open(sys.argv[2], "w").write(str(workers))
EOF
}

bench_arrays() {
  # Aggregate images/s of fused arrays of K ResNet-18s (bf16, channels-last, compiled, one batch of 512 for
  # every member) against K=1 in the same run; the largest K that beats K=1 by 1.2x (fasttrick.grid.arrays'
  # MIN_GAIN) is part 2's array size. The fused optimizer step (25 members vs 25 steps) is in bench_optim.
  local sweep=(--members 1,4,8,16,25 --steps 20)
  [ "$dry_run" = 1 ] && sweep=(--members 1,2 --steps 2 --width 0.125 --batch 32 --precision fp32 --no-compile)
  "$py" benchmarks/array_sweep.py --out "$OUT/array_sweep.json" "${sweep[@]}" \
    --time-limit "$((GPU_CHECK_STEP_LIMIT - 10))"
  local rc=$?
  "$py" - "$OUT/array_sweep.json" "$state/fuse" <<'EOF'
import json, sys
gains = {r["members"]: r["speedup_vs_k1"] for r in json.load(open(sys.argv[1]))["results"] if "speedup_vs_k1" in r}
for k, gain in sorted(gains.items()):
    print(f"K={k}: {gain:.2f}x the aggregate images/s of K=1")
paying = [k for k, gain in gains.items() if k > 1 and gain >= 1.2]
fuse = str(max(paying)) if paying else "off"
print(f"fusing for part 2: --fuse {fuse}")
open(sys.argv[2], "w").write(fuse)
EOF
  return "$rc"
}

build_check() {
  # The same machine kept part 1's kernels (build_ext finds them up to date); a fresh one builds them again.
  build
}

studies() {
  local n="${workers:-$(cat "$state/workers" 2>/dev/null || echo 2)}" remaining study start
  local fuse="${fuse:-$(cat "$state/fuse" 2>/dev/null || echo off)}"
  # Fused arrays fill the GPU themselves: one process trains them, one array after another.
  [ "$fuse" != off ] && n=1
  start=$(date +%s)
  echo "studies: --workers $n --fuse $fuse"
  if [ "$dry_run" = 1 ]; then
    "$py" -m fasttrick.train --config configs/lr_momentum.yaml --out "$state/studies/lr_momentum" --no-bar \
      --fuse "$fuse" --device cpu --epochs 2 --set data.train_subset=1024 --set data.test_subset=512 \
      --set data.batch_size=256 --set model.width=0.125
    return
  fi
  for study in "${STUDIES[@]}"; do
    # Each study gets what is left of this step's limit, less 5 s to stop inside the step's own timeout.
    remaining=$((GPU_CHECK_STEP_LIMIT - 5 - ($(date +%s) - start)))
    [ "$remaining" -gt 20 ] || break
    echo "study $study: up to $remaining s"
    timeout "$remaining" "$py" -m fasttrick.train --config "configs/$study.yaml" --out "$state/studies/$study" \
      --no-bar --workers "$n" --fuse "$fuse" || echo "study $study: stopped (exit $?), its finished runs count"
  done
}

report() {
  local dirs=("$state"/studies/*/)
  [ -d "${dirs[0]}" ] || { echo "no study folder to report on"; return 1; }
  "$py" -m fasttrick.report "${dirs[@]}" --out "$state/studies"
  cp "$state/studies/REPORT.md" "$OUT/REPORT.md"
  # Metrics, summaries, plots, diagnoses and REPORT.md; never the checkpoints (~90 MB each).
  tar -czf "$OUT/studies.tar.gz" --exclude='checkpoint*' -C "$state" studies
  ls -la "$OUT/studies.tar.gz"
}

# ---------------------------------------------------------------------------------------------------------

if [ -n "$one_step" ]; then
  "$one_step"
  exit
fi
for part in "${parts[@]}"; do
  echo "gpu_check: part $part$([ "$dry_run" = 1 ] && echo ' (dry run: CPU, shortened)')"
  printf '%-15s %8s %8s %8s  %s\n' "== part $part" "" "" "" "" >>"$table"
  part_start=$(date +%s)
  limit_var="PART${part}_LIMIT"
  part_limit="${!limit_var}"
  if [ "$part" = 1 ]; then
    step facts 120
    step build 900
    step tests 300
    step bench_optim 600
    step bench_loaders 120
    step bench_train 300
    step bench_arrays 300 10 # last of part 1: the sweep takes what the others left
  else
    step build_check 900
    step studies 300 "${BUDGETS[report]}" # as many studies as the part's remaining time allows
    step report 120
  fi
done

echo
cat "$table"
for json in "$OUT"/bench_*.json; do
  [ -f "$json" ] && "$py" benchmarks/summarize.py "$json"
done | tee "$OUT/summary.txt"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED steps: ${failed[*]} (logs in $OUT/logs.tar.gz)"
  exit 1
fi
echo "gpu_check: every step passed"
