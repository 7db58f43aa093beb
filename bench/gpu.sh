#!/usr/bin/env bash
# One command on a CUDA machine: build sparsecl with its CUDA kernels, run the CUDA tests, run the
# GPU benchmarks. Everything lands in RESULTS_DIR (argument, else $OUT, else bench/results/gpu-<date>):
#   machine.json  card, driver, nvcc, torch, triton, CUDA, date      build.log, resources.txt (ptxas)
#   tests.log / tests.xml                                            bench-cuda.json, bench.log
#   <op>/bench-cuda*.json for csr_linear_gpu, prune_regrow, masked_linear, slimmable
# Usage: bench/gpu.sh [--sanitize] [--quick] [--no-build] [--no-tests] [--no-bench] [RESULTS_DIR]
#   --sanitize  instead of tests + bench: every CUDA C++ op/layer test (tests/ops, tests/nn) and a Triton
#               subset under compute-sanitizer memcheck and racecheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1,
#               so the caching allocator hides nothing); logs sanitize-{memcheck,racecheck}.log
#   --quick     the benchmark's quick mode (d=0.1 only)
#   --no-build / --no-tests / --no-bench  skip that step (to split the work over several calls)
# Expects torch (CUDA build), triton, nvcc, pytest already installed (no internet needed).
set -uo pipefail
cd "$(dirname "$0")/.."

SANITIZE=0 QUICK="" BUILD=1 TESTS=1 BENCH=1 RESULTS=""
for a in "$@"; do
  case "$a" in
    --sanitize) SANITIZE=1 ;;
    --quick) QUICK="--quick" ;;
    --no-build) BUILD=0 ;;
    --no-tests) TESTS=0 ;;
    --no-bench) BENCH=0 ;;
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
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export SPARSECL_CUDA=1
export TRITON_INTERPRET=0  # run the compiled Triton kernels, not the interpreter (tests/conftest.py defaults to 1)
status=0
step() { echo "== $*" >&2; }

step "machine info"
nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$RESULTS/machine.json" <<'EOF'
import datetime, json, platform, subprocess
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = None
def cmd(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError:
        return None
print(json.dumps({
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "capability": list(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None,
    "driver": cmd("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
    "nvcc": (cmd("nvcc", "--version") or "").splitlines()[-1:],
    "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": tv,
    "python": platform.python_version(), "host": platform.node(),
}, indent=1))
EOF
cat "$RESULTS/machine.json"

if [ "$BUILD" = 1 ]; then
  step "build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS)"
  if ! "$PY" -m pip install --no-build-isolation --no-deps -e . > "$RESULTS/build.log" 2>&1; then
    tail -40 "$RESULTS/build.log"; echo "build failed" >&2; exit 1
  fi
  so=$(ls sparsecl/_C*.so 2>/dev/null | head -1)
  [ -n "$so" ] && command -v cuobjdump >/dev/null && cuobjdump --dump-resource-usage "$so" > "$RESULTS/resources.txt" 2>&1
fi
"$PY" -m sparsecl.cli info --json > "$RESULTS/info.json" || status=1
"$PY" -c "import sparsecl, sys; sys.exit(0 if sparsecl.build_info().get('cuda') else 1)" \
  || { echo "sparsecl was built without CUDA kernels" >&2; exit 1; }

if [ "$SANITIZE" = 1 ]; then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  # CUDA C++ kernels only (Triton's autotuning under the sanitizer would take hours); the T64odd
  # cases cover every dtype, block size and density with odd features and a partial token tile
  sanitize() {
    local tool=$1; shift
    step "compute-sanitizer --tool $tool: $*"
    compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      "$PY" -m pytest -q -x -p no:cacheprovider "$@" >> "$RESULTS/sanitize-$tool.log" 2>&1 || status=1
    tail -3 "$RESULTS/sanitize-$tool.log"
  }
  # every CUDA C++ op and layer test (all op families: bsr/csr/masked linear, prune_regrow, slimmable,
  # sparse conv), one Triton config per kernel (no autotuning) for the Triton subset
  export SPARSECL_TRITON_AUTOTUNE=0
  for tool in memcheck racecheck; do
    sanitize "$tool" tests/ops tests/nn -k cuda --ignore-glob="*_triton*" --ignore-glob="*triton_compile*"
    sanitize "$tool" tests/ops/test_bsr_linear_triton.py -m cuda -k "be_cuda and (T64odd or padding)"
    sanitize "$tool" tests/ops/test_sparse_conv2d_triton.py -m cuda -k "be_cuda and (rect-dil or padding or block_sizes)"
  done
  grep -h "ERROR SUMMARY" "$RESULTS"/sanitize-*.log
  exit $status
fi

if [ "$TESTS" = 1 ]; then
  step "CUDA tests"
  # every test marked `cuda` or parametrized over the cuda device; one config per Triton kernel
  # here (eight would be compiled per variant), the benchmark autotunes
  # xdist workers compile the Triton variants in parallel (compilation, not the GPU, bounds this step)
  workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n ${PYTEST_WORKERS:-8}")
  SPARSECL_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -p no:cacheprovider $workers tests -k "cuda" --durations=15 \
    --junitxml="$RESULTS/tests.xml" 2>&1 | tee "$RESULTS/tests.log" | tail -15
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

if [ "$BENCH" = 1 ]; then
  step "GPU benchmarks"
  "$PY" -m sparsecl.cli bench bsr_linear --device cuda $QUICK --out "$RESULTS" -v 2>&1 | tee "$RESULTS/bench.log" | tail -25
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  step "bar: forward t <= 1.25*d*t_dense and faster than torch.sparse BSR (measured in this run)"
  "$PY" - "$RESULTS"/bench-cuda*.json <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
dense = {r["shape"]: r["ms"] for r in rows if r["method"].startswith("dense") and r["pass_"] == "fwd"}
for r in rows:
    if r["method"].startswith("sparsecl") and r["pass_"] == "fwd":
        ratio = r["ms"] / (r["density"] * dense[r["shape"]])
        print(f'{r["method"]:16s} d={r["density"]:<4} {r["ms"]:.4f} ms  t/(d*t_dense)={ratio:.2f} '
              f'density_bar={r["meets_density_bar"]} beats_torch_bsr={r["beats_torch_bsr"]} rel_err={r["rel_err"]:.1e}')
EOF
  step "sparse conv2d GPU benchmark (bar: t <= max(1.25*d*t_dense, floor) on 256@14 and 512@7)"
  mkdir -p "$RESULTS/sparse_conv2d"
  "$PY" -m sparsecl.cli bench sparse_conv2d --device cuda $QUICK --out "$RESULTS/sparse_conv2d" -v 2>&1 \
    | tee "$RESULTS/bench-sparse_conv2d.log" | tail -25
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  "$PY" - "$RESULTS"/sparse_conv2d/bench-cuda*.json <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    if r["layer"] in ("256@14", "512@7"):
        print(f'{r["method"]:34s} {r["layer"]:6s} {r["dtype"]:8s} d={r["density"]:<4} {r["pass_"]:7s} {r["ms"]:.4f} ms '
              f'dense {r["dense_ms"]:.4f} floor {r["floor_ms"]:.4f} meets_bar={r["meets_bar"]} rel_err={r["rel_err"]:.1e}')
EOF
  # the remaining GPU benchmarks, each in its own folder (each writes bench-cuda*.json)
  for op in csr_linear_gpu prune_regrow masked_linear slimmable; do
    step "$op GPU benchmark"
    mkdir -p "$RESULTS/$op"
    "$PY" -m sparsecl.cli bench "$op" --device cuda $QUICK --out "$RESULTS/$op" -v 2>&1 \
      | tee "$RESULTS/bench-$op.log" | tail -20
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
fi
echo "results in $RESULTS (status $status)"
exit $status
