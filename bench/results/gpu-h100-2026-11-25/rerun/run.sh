#!/usr/bin/env bash
# device diagnostic run of 2026-11-25 (was diag/run.sh, with raise_check.py in diag/; kept here as provenance)
export PYTHONUNBUFFERED=1
R=/tmp/res4; mkdir -p $R
gcc --version | head -1; python3 -c "import torch; print(torch.__version__, torch._C._GLIBCXX_USE_CXX11_ABI)"
timeout 200 bench/gpu.sh --no-tests --no-bench $R > $R/build-step.log 2>&1; echo "build rc=$?"
for mode in plain triton cuda_ok; do
  echo "=== mode $mode"; timeout 90 python3 diag/raise_check.py $mode > $R/diag-$mode.log 2>&1; rc=$?
  echo "rc=$rc"; tail -16 $R/diag-$mode.log
  if [ $rc -ge 128 ] || [ $rc -eq 124 ] || grep -q "Fatal Python" $R/diag-$mode.log; then
    timeout 120 cuda-gdb -batch -ex "set pagination off" -ex "set cuda api_failures ignore" -ex run -ex bt \
      --args python3 diag/raise_check.py $mode > $R/gdb-$mode.log 2>&1
    grep -E "^#[0-9]+" $R/gdb-$mode.log | head -30
  fi
done
echo "=== two bad-input tests alone (no xdist)"
TRITON_INTERPRET=0 timeout 120 python3 -m pytest -q -p no:cacheprovider -p no:xdist \
  tests/ops/test_csr_linear_triton.py::test_cuda_bad_input_raises tests/ops/test_masked_linear_triton.py::test_cuda_bad_input_raises 2>&1 | tail -4
echo "=== full CUDA tests"
timeout 260 bench/gpu.sh --no-build --no-bench $R 2>&1 | tail -8
tar czf $OUT/res4.tgz -C $R .
