#!/usr/bin/env bash
# The one device script: everything a short GPU lease should measure, in <= 7 minutes, each step under
# `timeout` (a step that fails or times out is reported and the script goes on):
#   build     pip install -e . for TORCH_CUDA_ARCH_LIST=9.0a, MAX_JOBS=16  -> build.log
#   probe     versions, nvidia-smi, what was built                  -> machine.json, nvidia-smi.txt
#   ceilings  HBM copy, L2->SM read bandwidth, bf16 GEMM at the bar shape  -> ceilings.json
#   correct   the changed ops against float64, outputs poisoned      -> correct.json
#   gap       the gap table at the bar shapes (CUDA-graph replays over rotating inputs; ms / floor / x floor /
#             TFLOP/s / x dense; floors from bench/floors.py)      -> gap.json
#   ablate    bsr gather GEMM: densities, num_stages, B=64 vs 128   -> ablate.json
#   ncu       short ncu sections on the 3 cases furthest from their floor, if ncu exists -> ncu-<i>.log
# Step limits (nvidia-smi included) add up to 420 s; build 140 s (the H100 build of 2026-11-25 took ~110 s).
# The gap table is printed last. Results go to RESULTS_DIR (argument, else $OUT, else bench/results/gpu-<date>).
# Usage: bench/gpu.sh [--dry-run] [--no-build] [--tests] [RESULTS_DIR]
#   --dry-run   every step on the CPU with tiny shapes, Triton interpreted, no build, no nvidia-smi/ncu: CI runs
#               it so the script cannot die on a Python error on the device (device: Python 3.12, torch 2.11,
#               triton 3.6, nvcc)
#   --no-build  use the installed extension
#   --tests     after the table, the CUDA test suite (-k cuda), outside the 7-minute budget
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 BUILD=1 TESTS=0 RESULTS=""
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --no-build) BUILD=0 ;;
    --tests) TESTS=1 ;;
    -*) echo "unknown option $a" >&2; exit 2 ;;
    *) RESULTS="$a" ;;
  esac
done
RESULTS=${RESULTS:-${OUT:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16}
DRYFLAG="" SCALE=1
if [ "$DRY" = 1 ]; then
  DRYFLAG="--dry-run" SCALE=${DRY_RUN_TIME_SCALE:-6}  # the interpreter on a shared CI CPU is slower
  export TRITON_INTERPRET=1
else
  export TRITON_INTERPRET=0  # the compiled Triton kernels, not the interpreter
fi
status=0
T0=$SECONDS
# step NAME SECONDS CMD...: run CMD under `timeout`, log to RESULTS/NAME.log, report and go on
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, at $((SECONDS - T0))s)" >&2
  timeout --kill-after=5 "$((limit * SCALE))" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  if [ $rc != 0 ]; then
    status=1
    echo "!! $name failed (rc=$rc$([ $rc = 124 ] && echo ', timed out')); tail of $name.log:" >&2
    tail -15 "$RESULTS/$name.log" >&2
  fi
  return $rc
}
BENCH=("$PY" bench/gpu_bench.py)

[ "$DRY" = 1 ] || timeout 5 nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1
if [ "$BUILD" = 1 ] && [ "$DRY" = 0 ]; then
  step build 140 "$PY" -m pip install --no-build-isolation --no-deps -e . \
    || { echo "build failed: the remaining steps would measure a stale extension" >&2; exit 1; }
fi
step probe 10 "${BENCH[@]}" probe --out "$RESULTS" $DRYFLAG && { cat "$RESULTS/machine.json"; echo; }
step ceilings 20 "${BENCH[@]}" ceilings --out "$RESULTS" $DRYFLAG
SPARSECL_TRITON_AUTOTUNE=0 step correct 50 "${BENCH[@]}" correct --out "$RESULTS" $DRYFLAG
step gap 90 "${BENCH[@]}" gap --out "$RESULTS" $DRYFLAG
step ablate 35 "${BENCH[@]}" ablate --out "$RESULTS" $DRYFLAG

if [ -f "$RESULTS/gap.json" ] && step ncu-targets 10 "${BENCH[@]}" ncu-targets --out "$RESULTS" $DRYFLAG; then
  targets=$("$PY" -c "import json,sys; print('\n'.join(json.load(open(sys.argv[1]))['cases']))" "$RESULTS/ncu-targets.json")
  i=0
  while IFS= read -r case; do
    i=$((i + 1))
    if [ "$DRY" = 1 ]; then  # the profiled command itself, without ncu
      step "ncu-$i" 60 "${BENCH[@]}" one --out "$RESULTS" $DRYFLAG --case "$case"
    elif command -v ncu > /dev/null; then
      # only the kernels of the case's timed call (gpu_bench.py one wraps it in this NVTX range)
      step "ncu-$i" 20 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --nvtx \
        --nvtx-include "sparsecl_target/" --launch-count 4 "$PY" bench/gpu_bench.py one --out "$RESULTS" --case "$case"
    else
      echo "ncu not found: no kernel profiles" >&2
      break
    fi
  done <<< "$targets"
fi

if [ "$TESTS" = 1 ] && [ "$DRY" = 0 ]; then
  SPARSECL_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -p no:cacheprovider tests -k cuda --junitxml="$RESULTS/tests.xml" \
    > "$RESULTS/tests.log" 2>&1 || status=1
  tail -3 "$RESULTS/tests.log"
fi

echo "== done in $((SECONDS - T0))s; results in $RESULTS (status $status)" >&2
[ -f "$RESULTS/ceilings.json" ] && "$PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print('ceilings:', {k: round(v, 3) for k, v in c.items() if isinstance(v, float)})" "$RESULTS/ceilings.json"
[ -f "$RESULTS/gap.json" ] && "${BENCH[@]}" table --out "$RESULTS"
exit $status
