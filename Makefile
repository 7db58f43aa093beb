# Two entry points that work on a fresh machine (see README):
#   make run    set up .venv, build sparsecl with its CUDA + CPU extension, run the main job
#   make test   set up the same, then run ctest and the whole pytest suite
# Knobs: PYTHON, TORCH (pip spec), SPARSECL_CUDA=0|1|auto, TORCH_CUDA_ARCH_LIST, MAX_JOBS.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1
export CUDA_HOME ?= /usr/local/cuda
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2
BIN := $(VENV)/bin
SOURCES := $(shell find csrc sparsecl kernels bench -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.inc' -o -name '*.def') setup.py

.PHONY: run bench test ctest pytest install clean

install: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(BIN)/python -m pip install -q "$(TORCH)" ninja "cmake>=3.28" numpy tqdm pyyaml matplotlib scikit-learn \
		pytest pytest-benchmark hypothesis expecttest
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

run: install
	$(BIN)/sparsecl info
	$(BIN)/sparsecl continual -c configs/continual/digits.yaml --compare-dense-masked

bench: install
	$(BIN)/sparsecl bench --quick

ctest: install
	@dpkg -s libgtest-dev >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libgtest-dev)
	rm -rf build-cmake
	PATH=$(abspath $(BIN)):$$PATH cmake -S . -B build-cmake -DPython3_EXECUTABLE=$(abspath $(BIN))/python >/dev/null
	PATH=$(abspath $(BIN)):$$PATH cmake --build build-cmake -j$(MAX_JOBS)
	PATH=$(abspath $(BIN)):$$PATH ctest --test-dir build-cmake --output-on-failure

pytest: install
	$(BIN)/python -m pytest -q

test: ctest pytest

clean:
	rm -rf build build-cmake $(VENV) sparsecl/*.so *.egg-info

# make asan: ASan+UBSan build of the CPU extension into build-asan/ (the normal sparsecl/_C*.so is left
# alone; --force: setuptools does not track header dependencies, so an edited .h would leave stale objects),
# then the op and layer tests against it; findings abort the run (UBSan) or fail it (ASan).
ASAN_TESTS ?= tests/ops tests/nn tests/test_formats.py tests/reliability/test_fuzz_ops.py tests/reliability/test_fuzz_layouts.py tests/reliability/test_large_indices.py
.PHONY: asan
asan: install
	SPARSECL_SANITIZE=1 SPARSECL_CUDA=0 $(BIN)/python setup.py -q build_ext --force --build-lib build-asan/lib --build-temp build-asan/tmp
	SPARSECL_EXTENSION=$$(ls build-asan/lib/sparsecl/_C*.so) \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:abort_on_error=1:print_summary=1:allocator_may_return_null=1:max_allocation_size_mb=6144 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ASAN_TESTS)
