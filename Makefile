# Two-command start:  make demo   (set-up + a SAMP/SAMP++ demo on the embedded digits)
#                     make test   (set-up + the full test suite on the CPU build)
# Each target sets itself up from a fresh clone: a virtual environment with the CPU build of
# torch, the package compiled in place (pip install --no-build-isolation -e .). `make demo`
# installs only what the package needs; the test targets add the `test` extra.
PYTHON ?= python3
VENV ?= .venv
CUDA_VENV ?= .venv-cuda
WHEEL_DIR ?= dist
BIN := $(VENV)/bin
# The nvcc first on PATH may be a wrapper script; torch needs the toolkit's root.
CUDA_HOME ?= $(shell d=$$(dirname $$(dirname $$(readlink -f $$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)))); \
	for c in $$d /usr/local/cuda-13.0 /usr/local/cuda; do [ -x $$c/bin/nvcc ] && [ -d $$c/lib64 ] && [ ! -L $$c ] && echo $$c && break; done)
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
# Prints "<what> ... done in N s" around a quiet step.
TIMED = t0=$$(date +%s); echo "==> $(1) ..."; $(2) && echo "    done in $$(( $$(date +%s) - t0 )) s"

.PHONY: setup test-extras demo test typecheck bench bench-smoke ctest cxx17-check cuda-check gpu-check wheels wheel install-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py _build/build_plan.py _build/backend.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp)
	@test -x $(BIN)/python || { echo "==> creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(call TIMED,installing torch 2.13.0 (CPU build; a 200 MB download on a fresh machine),$(PIP) torch==2.13.0)
	@$(call TIMED,installing the build tools (setuptools and ninja),$(PIP) "setuptools>=70.1" ninja)
	@$(call TIMED,compiling the C++ extension saliency_fast._C and installing the package (a few minutes on 2 cores),\
		SALIENCY_FAST_NO_CUDA=1 $(PIP) --no-build-isolation -e .)
	@$(BIN)/python -m saliency_fast --version | sed 's/^/    /'
	@touch $@

# The `test` extra of pyproject.toml (pytest, hypothesis, captum, quantus, ...), without rebuilding.
test-extras: $(VENV)/.test-extras

$(VENV)/.test-extras: $(VENV)/.installed pyproject.toml
	@$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))" > $(VENV)/test-requirements.txt
	@$(call TIMED,installing the test extras,$(PIP) -r $(VENV)/test-requirements.txt)
	@touch $@

demo: setup
	@echo "==> running the demo: SAMP, SAMP++ and the gradient on 16 test digits"
	$(BIN)/saliency-fast demo --out out/demo

test: test-extras
	SALIENCY_FAST_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q tests

# mypy over the package (configured in pyproject.toml's [tool.mypy]) and the import layers of
# ARCHITECTURE.md (scripts/check_layers.py); both read the sources only.
typecheck: test-extras
	@$(call TIMED,type-checking saliency_fast (mypy),$(BIN)/python -m mypy)
	@$(call TIMED,checking the import layers,$(BIN)/python scripts/check_layers.py)

# A wheel with the compiled extension, built against (and pinned to) the torch of $(VENV).
# build/lib* is cleared so no stale file of an earlier build enters the wheel; the object files
# in build/temp* are reused when nothing changed.
wheel: setup
	rm -rf build/lib.* build/bdist.*
	@$(call TIMED,building the wheel into $(WHEEL_DIR)/,\
		SALIENCY_FAST_NO_CUDA=1 $(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) .)
	@ls $(WHEEL_DIR)/saliency_fast-*.whl

# Installs like users do, into fresh venvs: the sdist with pip's default build isolation, the
# wheel of `make wheel` into a venv without torch, and the sdist without a C++ compiler (two
# compiles and three torch installs: 22 min on a busy 2-core machine, 5.5 min of CPU time).
install-check: test-extras
	SALIENCY_FAST_INSTALL_CHECK=1 $(BIN)/python -m pytest -q -rs --durations=0 tests/test_install_packages.py

bench: test-extras
	$(BIN)/python bench/write_benchmarks.py

# Every benchmark once, untimed (~2 min): the suites still run, and their own checks hold (the
# implementations compared give the same results); BENCHMARKS.md is left alone.
bench-smoke: test-extras
	$(BIN)/python -m pytest -q bench --benchmark-disable

ctest: setup cxx17-check
	cmake -S . -B build-cmake -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build build-cmake -j2
	ctest --test-dir build-cmake --output-on-failure

# torch before 2.10 builds extensions as C++17 (setup.py accepts torch >= 2.4, and the GPU image
# has 2.11), while CMake above and torch >= 2.10 use C++20: keep the sources C++17 with a
# syntax-only pass over each C++ file against the installed torch's headers.
cxx17-check: setup
	@includes="$$($(BIN)/python -c 'import sysconfig, torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths() + [sysconfig.get_paths()["include"]]))')"; \
	for source in csrc/*.cpp csrc/cpu/*.cpp; do \
	  echo "C++17: $$source"; $${CXX:-c++} -std=c++17 -fsyntax-only -w -fopenmp -Icsrc $$includes $$source || exit 1; \
	done

# The CUDA build against torch 2.14.1 (a CUDA 13.0 build), compiled in a clean copy of the
# committed tree so the CPU build above is left alone. Checks that it links, that the ops are
# registered for the CUDA dispatch key, and that the CPU tests pass with it too. This venv also
# carries torchvision 0.29.1 (the build that loads against torch 2.14.1), timm and the CAM peers
# (grad-cam, torchcam), so tests/test_models_scale.py runs here (it skips where they are absent).
cuda-check:
	test -n "$(CUDA_HOME)" || (echo "no CUDA toolkit found (nvcc)"; exit 1)
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 setuptools wheel numpy pybind11 ninja \
		pytest hypothesis scipy scikit-learn scikit-image captum quantus saliency tqdm matplotlib pillow pytest-benchmark \
		torchvision==0.29.1 timm grad-cam torchcam
	rm -rf build-cuda && git clone -q . build-cuda
	cd build-cuda && CUDA_HOME=$(CUDA_HOME) FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0+PTX" MAX_JOBS=2 \
		../$(CUDA_VENV)/bin/python setup.py -q build_ext --inplace
	cd build-cuda && PYTHONPATH=. ../$(CUDA_VENV)/bin/python scripts/check_cuda_build.py
	cd build-cuda && SALIENCY_FAST_REQUIRE_NATIVE=1 ../$(CUDA_VENV)/bin/python -m pytest -q tests

# The prepared GPU check (README "GPU check"), for a GPU machine without network whose python has
# a CUDA torch: build in place, carried wheels, CUDA tests, compute-sanitizer, GPU benchmarks;
# report.md / report.json in OUT. GPU_CHECK_ARGS=--dry-run runs the orchestration on a CPU.
OUT ?= out/gpu-check
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(OUT) $(GPU_CHECK_ARGS)

# Wheels to carry to that machine (it has no network): the pure-Python peers the comparison tests
# use (captum, quantus, PAIR saliency) and those of their dependencies the GPU image lacks, plus
# ninja (parallel builds); into wheels/ (git-ignored), installed there with --no-index. Quantus
# also needs pandas, scikit-image and opencv, compiled wheels too large to carry: without them
# in the image its comparisons skip.
WHEELS := captum quantus saliency ninja cachetools
wheels:
	mkdir -p wheels
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d wheels $(WHEELS)
	ls wheels

clean:
	rm -rf build build-cmake build-cuda dist saliency_fast/*.so saliency_fast/_native_build.json
