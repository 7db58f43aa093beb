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
	$(BIN)/sparsecl continual -c configs/continual/digits.yaml --compare-dense-masked --no-progress

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
