# Two commands matter on a fresh machine:  `make demo`  and  `make test`.
# Everything else is a building block of those two.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= /usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS ?= 1

.PHONY: install data demo test lint format asan tsan clean

# Python environment: torch pinned to 2.13.0 (this project's machines' pip index serves its CPU
# wheel; an index that serves the CUDA build installs that, a multi-GB download), then the
# package with its compiled extension (editable).
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard src/dorefa/csrc/*)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q scikit-build-core pybind11 ruff threadpoolctl pyyaml
	$(PY) -m pip install -q --no-build-isolation -e '.[test,qonnx]'
	touch $@

install: $(VENV)/.installed

# Real Fashion-MNIST from Debian (IDX files in /usr/share/datasets/fashion-mnist).
data:
	@if [ ! -f $(DATA_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  (echo "could not install dataset-fashion-mnist: run 'sudo apt-get install dataset-fashion-mnist'" && exit 1); \
	fi

# The demo trains on half the training set (30k images, 3 epochs) in two data-parallel processes
# of one thread each: ~5 minutes on 2 cores (0.866 test accuracy on an AMD EPYC Zen 4; the
# full 60k set reaches 0.885 in 3 epochs, ~13 minutes on an idle core: docs/training.md). One thread per process never
# oversubscribes a shared 2-vCPU machine, where two torch threads in one process can collapse.
demo: install data
	$(VENV)/bin/dorefa train --model svhn --data fashion-mnist --bits 1,2,6 --epochs 3 --subset 30000 --nproc 2 --out runs/demo-svhn-w1a2g6 --resume
	$(VENV)/bin/dorefa export runs/demo-svhn-w1a2g6/checkpoint.pt -o runs/demo-svhn-w1a2g6/model.dorefa
	$(VENV)/bin/dorefa run runs/demo-svhn-w1a2g6/model.dorefa --data fashion-mnist --compare runs/demo-svhn-w1a2g6/checkpoint.pt --threads 1
	$(PY) benchmarks/bench_runtime.py --quick --checkpoint runs/demo-svhn-w1a2g6/checkpoint.pt

test: install data
	$(PY) -m pytest -q -x --durations=15 tests

lint:
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format:
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks
	test -x $(VENV)/bin/clang-format || $(PY) -m pip install -q clang-format
	$(VENV)/bin/clang-format -i src/dorefa/csrc/*.cpp src/dorefa/csrc/*.h tests/native/*.cpp

# Kernel library built with -fsanitize=address,undefined in its own build dir, then the kernel
# tests run against that build (DOREFA_KERNELS_EXTENSION points dorefa.kernels at it). python is
# not instrumented, so libasan is preloaded, with libstdc++ so that ASan's __cxa_throw
# interceptor finds the real one. Any sanitizer report aborts the run: non-zero exit.
ASAN_DIR := build-asan
KERNEL_TESTS := tests/test_kernels.py tests/test_kernel_errors.py tests/test_fused_epilogue.py \
  tests/test_float_layers.py tests/test_kernel_selection.py tests/test_prepared_conv.py \
  tests/test_grad_kernels.py tests/test_engine.py tests/test_engine_edges.py tests/test_stream_ops.py \
  tests/test_requant_search.py \
  tests/test_dense_fields.py tests/test_lut.py tests/test_int8_winograd.py
asan: install
	cmake -S . -B $(ASAN_DIR) --log-level=WARNING -DDOREFA_SANITIZE=ON \
	  -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(abspath $(PY))
	cmake --build $(ASAN_DIR) -j2
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	DOREFA_KERNELS_EXTENSION=$$(ls $(abspath $(ASAN_DIR))/_kernels*.so) \
	PYTHONPATH=$(abspath src) \
	$(PY) -m pytest -q -x -p no:cacheprovider --noconftest --capture=sys $(KERNEL_TESTS)

# The kernels' thread pool under ThreadSanitizer: a native stress test (many jobs, barriers,
# several callers at once, workers falling asleep and waking). ASLR off: some kernels' mmap
# randomisation is wider than TSan's shadow memory allows.
tsan:
	mkdir -p build-tsan
	g++ -std=c++17 -O1 -g -fsanitize=thread -Isrc/dorefa/csrc tests/native/thread_pool_stress.cpp \
	  src/dorefa/csrc/thread_pool.cpp -o build-tsan/thread_pool_stress -lpthread
	TSAN_OPTIONS=halt_on_error=1 setarch $$(uname -m) -R build-tsan/thread_pool_stress

clean:
	rm -rf build build-* $(VENV) runs .pytest_cache
