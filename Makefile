# Two-command start:  make demo   (set-up + a SAMP/SAMP++ demo on the embedded digits)
#                     make test   (set-up + the full test suite on the CPU build)
# Each target sets itself up from a fresh clone: a virtual environment with the CPU build of
# torch, the package compiled in place (pip install --no-build-isolation -e .).
PYTHON ?= python3
VENV ?= .venv
CUDA_VENV ?= .venv-cuda
BIN := $(VENV)/bin
# The nvcc first on PATH may be a wrapper script; torch needs the toolkit's root.
CUDA_HOME ?= $(shell d=$$(dirname $$(dirname $$(readlink -f $$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)))); \
	for c in $$d /usr/local/cuda-13.0 /usr/local/cuda; do [ -x $$c/bin/nvcc ] && [ -d $$c/lib64 ] && [ ! -L $$c ] && echo $$c && break; done)
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: setup demo test bench bench-smoke ctest cuda-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) setuptools wheel numpy pybind11 ninja
	SALIENCY_FAST_NO_CUDA=1 $(PIP) --no-build-isolation -e ".[test]"
	touch $@

demo: setup
	$(BIN)/saliency-fast demo --out out/demo

test: setup
	SALIENCY_FAST_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/write_benchmarks.py

# Every benchmark once, untimed (~2 min): the suites still run, and their own checks hold (the
# implementations compared give the same results); BENCHMARKS.md is left alone.
bench-smoke: setup
	$(BIN)/python -m pytest -q bench --benchmark-disable

ctest: setup
	cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build build-cmake -j2
	ctest --test-dir build-cmake --output-on-failure

# The CUDA build against torch 2.14.1 (a CUDA 13.0 build), compiled in a clean copy of the
# committed tree so the CPU build above is left alone. Checks that it links, that the ops are
# registered for the CUDA dispatch key, and that the CPU tests pass with it too. This venv also
# carries torchvision 0.29.1 (the build that loads against torch 2.14.1), timm and the CAM peers
# (grad-cam, torchcam), so tests/test_models_scale.py runs here (it skips where they are absent).
cuda-check:
	test -n "$(CUDA_HOME)" || (echo "no CUDA toolkit found (nvcc)"; exit 1)
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 setuptools wheel numpy pybind11 ninja \
		pytest hypothesis scipy scikit-learn captum quantus saliency tqdm matplotlib pillow pytest-benchmark \
		torchvision==0.29.1 timm grad-cam torchcam
	rm -rf build-cuda && git clone -q . build-cuda
	cd build-cuda && CUDA_HOME=$(CUDA_HOME) FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=2 \
		../$(CUDA_VENV)/bin/python setup.py -q build_ext --inplace
	cd build-cuda && PYTHONPATH=. ../$(CUDA_VENV)/bin/python scripts/check_cuda_build.py
	cd build-cuda && SALIENCY_FAST_REQUIRE_NATIVE=1 ../$(CUDA_VENV)/bin/python -m pytest -q tests

clean:
	rm -rf build build-cmake build-cuda saliency_fast/*.so
