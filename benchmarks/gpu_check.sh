#!/usr/bin/env bash
# The GPU lease plan: ONE lease of the device tool, TWO calls issued back to back (the machine stays warm
# for 30 s between them, so only the first pays a start). docs/gpu_lease.md says how to prepare and call
# it and what to commit afterwards. From the repo root, on the device (python3 there is the device's):
#
#   call 1 (run tool: carry [".data", ".whl"], timeout_s 470):
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
#     OUT=$OUT bash benchmarks/gpu_check.sh --call 1
#   call 2 (the same carry, timeout_s 350), at once after call 1 returns:
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
#     OUT=$OUT bash benchmarks/gpu_check.sh --call 2
#   dry run, on a CPU (CI runs it on the device stack, .ci/device-stack.sh), both calls shortened:
#     OUT=<folder> bash benchmarks/gpu_check.sh --dry-run
#
# Call 1 measures: machine facts (nvidia-smi, nvcc -> CUDA_HOME, versions against .ci/device-stack.env, the
# device-to-device copy bandwidth), the build (CPU and CUDA kernels separately), the tests that need a GPU
# (pytest-xdist), the optimizer, loader and train-step benchmarks (numerics checked in each). Call 2 runs the
# studies in docs/REPRODUCTION.md's priority order, as many as its budget allows, packed --workers N per
# GPU as call 1 found pays, then REPORT.md; its results go out as one tar.gz (no checkpoints).
#
# Every step runs under `timeout` with its own budget (BUDGETS below); after every step the table
# (step, budget, seconds, status) is rewritten to $OUT/steps.txt and printed, so a kill keeps what ran.
# At most 8 files come back from $OUT: logs are packed into $OUT/logs.tar.gz after every step.
set -uo pipefail

# Real budgets, seconds. Estimates until a GPU measures them (docs/gpu_lease.md gives each one's basis).
# Each call's sum stays under its run timeout_s minus ~40 s for pip, packing and the reply; the two calls plus
# one machine start (60-120 s) fit the 15-minute lease.
declare -A BUDGETS=(
  [facts]=20 [build]=90 [tests]=60 [bench_optim]=75 [bench_loaders]=20 [bench_train]=100 [bench_autotune]=55
  [build_check]=15 [studies]=255 [report]=20
)
CALL1_STEPS=(facts build tests bench_optim bench_loaders bench_train bench_autotune)
CALL2_STEPS=(build_check studies report)
CALL1_LIMIT=430 # run tool timeout_s 470
CALL2_LIMIT=310 # run tool timeout_s 350
# Study priority (docs/REPRODUCTION.md): claims decided per epoch of training, most first.
STUDIES=(group2 lr_momentum group3 schedules l2 group1)

usage() {
  echo "usage: OUT=<folder> bash benchmarks/gpu_check.sh (--call 1|2 [--workers N] | --dry-run)"
  exit 2
}
calls=()
one_step=""
dry_run="${GPU_CHECK_DRY_RUN:-0}"
workers="${GPU_CHECK_WORKERS:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --call) [ "${2:-}" = 1 ] || [ "${2:-}" = 2 ] || usage; calls=("$2"); shift ;;
    --dry-run) dry_run=1; calls=(1 2) ;;
    --workers) workers="${2:?}"; shift ;;
    --step) one_step="${2:?}"; shift ;; # internal: one step, in its own process so `timeout` can stop it
    *) usage ;;
  esac
  shift
done
[ ${#calls[@]} -gt 0 ] || [ -n "$one_step" ] || usage
: "${OUT:?set OUT to the folder that receives the results}"
cd "$(dirname "$0")/.."
root="$PWD"
self="$root/benchmarks/gpu_check.sh"
py="${PYTHON:-python3}"
if [ -z "$one_step" ]; then
  export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  [ -f .data/cifar10-jpeg.tar.xz ] && export FASTTRICK_DATA="$root/.data/cifar10-jpeg.tar.xz"
  # Survives between the two calls while the machine stays warm; $OUT is emptied before each call.
  export FASTTRICK_LEASE_DIR="${FASTTRICK_LEASE_DIR:-/tmp/fasttrick-lease}"
  [ "$dry_run" = 1 ] && FASTTRICK_LEASE_DIR="$(mktemp -d)"
  export FASTTRICK_CACHE="${FASTTRICK_CACHE:-$FASTTRICK_LEASE_DIR/cache}" GPU_CHECK_DRY_RUN="$dry_run" \
    GPU_CHECK_WORKERS="$workers"
fi
lease="$FASTTRICK_LEASE_DIR"
logs="$lease/logs"
mkdir -p "$logs" "$OUT"

for call in 1 2; do
  steps_var="CALL${call}_STEPS[@]"
  limit_var="CALL${call}_LIMIT"
  total=0
  for s in "${!steps_var}"; do total=$((total + BUDGETS[$s])); done
  if [ "$total" -gt "${!limit_var}" ] || [ "${!limit_var}" -ge 540 ]; then
    echo "gpu_check: call $call's budgets sum to $total s, over its limit ${!limit_var} s (< 540): fix BUDGETS"
    exit 2
  fi
done

table="$OUT/steps.txt"
call_start=$(date +%s)
[ -z "$one_step" ] && printf '%-15s %8s %8s %8s  %s\n' step budget_s limit_s seconds status >"$table"

# step NAME DRY_LIMIT [RESERVE]: runs the function NAME (in `gpu_check.sh --step NAME`) under timeout, with
# the real budget or DRY_LIMIT in a dry run; logs to $logs/NAME.log, appends a row to the table, packs the
# logs and prints the table. With RESERVE, the step may also use what earlier steps left of the call's limit,
# keeping RESERVE seconds for the steps after it (an estimate that was too high then buys a longer last step).
failed=()
step() {
  local name="$1" dry_limit="$2" reserve="${3:-}" limit status start seconds rc left
  limit="${BUDGETS[$name]}"
  if [ -n "$reserve" ]; then
    left=$((call_limit - ($(date +%s) - call_start) - reserve))
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
  tar -czf "$OUT/logs.tar.gz" -C "$lease" logs 2>/dev/null
  printf '\n'
  cat "$table"
  echo "call so far: $(($(date +%s) - call_start)) s"
}
skip() {
  printf '%-15s %8s %8s %8s  %s\n' "$1" "${BUDGETS[$1]}" - - "skipped: $2" >>"$table"
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
  # sm_90 only: the one card here (setup.py's default list builds every architecture: one nvcc pass each).
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" BUILD_LOG_DIR="$logs" \
    "$root/.ci/build-inplace.sh" "$py"
  "$py" -m fasttrick.env
}

tests() {
  local selection=(tests -k "cuda or triton or gpu")
  [ "$dry_run" = 1 ] && selection=(tests/test_sgdw_op.py -k "opcheck or launch")
  # 4 processes share the GPU (pytest-xdist is on the device; 2 on a 2-core dry run); a machine without
  # xdist runs them in one.
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
  # The CPU loaders and the cache decode are CPU-only figures: measured on the dev machine, not here.
  if [ "$dry_run" = 1 ]; then bench loaders -k "torch-cpu"; else bench loaders -k "cuda"; fi
}

bench_train() {
  bench train -k "not max-autotune"
  # Packing for call 2 (a heuristic until measured): when batch 1024 runs >= 1.15x the images/s of batch 512,
  # one run at batch 512 leaves the GPU under-filled, and a second run beside it fills the gaps.
  "$py" - "$OUT/bench_train.json" "$lease/workers" <<'EOF'
import json, sys
rows = {b["extra_info"]["impl"]: b["extra_info"]["images_per_s"] for b in json.load(open(sys.argv[1]))["benchmarks"]}
b512, b1024 = rows.get("fasttrick-compiled-bf16-b512"), rows.get("fasttrick-compiled-bf16-b1024")
workers = 2 if b512 and b1024 and b1024 >= 1.15 * b512 else 1
print(f"packing for call 2: {workers} run(s) per GPU (compiled bf16 images/s: b512 {b512}, b1024 {b1024})")
open(sys.argv[2], "w").write(str(workers))
EOF
}

bench_autotune() {
  "$py" -m pytest benchmarks/test_bench_train.py --benchmark-only --benchmark-json="$OUT/bench_autotune.json" \
    -q -p no:cacheprovider -k "max-autotune"
}

build_check() {
  # A warm machine kept call 1's kernels (build_ext finds them up to date); a fresh one builds them again.
  build
}

studies() {
  local n="${workers:-$(cat "$lease/workers" 2>/dev/null || echo 2)}" remaining study start
  start=$(date +%s)
  echo "studies: --workers $n"
  if [ "$dry_run" = 1 ]; then
    "$py" -m fasttrick.train --config configs/smoke.yaml --out "$lease/studies/smoke" --no-bar --workers 1 \
      --only "fused_sgdw*" --epochs 2 --set data.train_subset=1024 --set data.test_subset=512
    return
  fi
  for study in "${STUDIES[@]}"; do
    # Each study gets what is left of this step's limit, less 5 s to stop inside the step's own timeout.
    remaining=$((GPU_CHECK_STEP_LIMIT - 5 - ($(date +%s) - start)))
    [ "$remaining" -gt 20 ] || break
    echo "study $study: up to $remaining s"
    timeout "$remaining" "$py" -m fasttrick.train --config "configs/$study.yaml" --out "$lease/studies/$study" \
      --no-bar --workers "$n" || echo "study $study: stopped (exit $?), its finished runs count"
  done
}

report() {
  local dirs=("$lease"/studies/*/)
  [ -d "${dirs[0]}" ] || { echo "no study folder to report on"; return 1; }
  "$py" -m fasttrick.report "${dirs[@]}" --out "$lease/studies"
  cp "$lease/studies/REPORT.md" "$OUT/REPORT.md"
  # Metrics, summaries, plots, diagnoses and REPORT.md; never the checkpoints (~90 MB each).
  tar -czf "$OUT/studies.tar.gz" --exclude='checkpoint*' -C "$lease" studies
  ls -la "$OUT/studies.tar.gz"
}

# ---------------------------------------------------------------------------------------------------------

if [ -n "$one_step" ]; then
  "$one_step"
  exit
fi
for call in "${calls[@]}"; do
  echo "gpu_check: call $call$([ "$dry_run" = 1 ] && echo ' (dry run: CPU, shortened)')"
  printf '%-15s %8s %8s %8s  %s\n' "== call $call" "" "" "" "" >>"$table"
  call_start=$(date +%s)
  limit_var="CALL${call}_LIMIT"
  call_limit="${!limit_var}"
  if [ "$call" = 1 ]; then
    step facts 120
    step build 900
    step tests 300
    step bench_optim 600
    step bench_loaders 120
    step bench_train 300
    if [ "$dry_run" = 1 ]; then
      skip bench_autotune "dry run: max-autotune is a CUDA-only variant"
    else
      step bench_autotune 0 10 # last of call 1: its autotuning compile takes what the others left
    fi
  else
    step build_check 900
    step studies 300 "${BUDGETS[report]}" # as many studies as the call's remaining time allows
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
