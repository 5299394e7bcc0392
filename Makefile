# `make test` on a fresh machine: creates .venv, installs torch (the pinned CPU wheel, only if no torch
# is importable there), the dev tools, builds mdt_kernels._C and runs the test suite.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PIP := $(VPY) -m pip install --no-input

.PHONY: venv build sim test test-sanitize train bench bench-optim bench-micro lint clean FORCE

$(VPY):
	$(PY) -m venv $(VENV)

venv: $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || $(PIP) "torch==$(TORCH_VERSION)"
	@$(VPY) -c "import pytest, hypothesis, pytest_benchmark, triton, numpy, ninja, sklearn, diffusers, tqdm, matplotlib, PIL, scipy, mlxtend, tensorboard" 2>/dev/null || \
		$(PIP) pytest hypothesis pytest-benchmark ruff triton numpy ninja scikit-learn diffusers tqdm matplotlib Pillow scipy mlxtend tensorboard
	@# torch-fidelity without its deps: it would pull torchvision (and a CUDA torch); mdt.fid needs torch alone
	@$(VPY) -c "import importlib.util as u; assert u.find_spec('torch_fidelity')" 2>/dev/null || \
		$(PIP) --no-deps "torch-fidelity==0.4.0"

# `make build` (and so test, train, bench) runs pip, which compiles the whole extension (minutes), only when
# something the extension is built from is newer than the last build's stamp $(BUILT): a file under csrc/
# (or one added or removed there; csrc/simt, the test suite's, excepted), setup.py, pyproject.toml, the venv
# (made anew, or another torch in it) or one of setup.py's environment switches (BUILD_ENV_VARS, recorded in
# $(BUILD_ENV)). It also runs when the stamp, the venv, the mdt command or the extension is missing.
# `make clean` removes the stamp with build/.
BUILT := build/.built
BUILD_ENV := build/.build-env
BUILD_ENV_VARS := MDT_KERNELS_CUDA MDT_KERNELS_CUDA_ARCHS TORCH_CUDA_ARCH_LIST MDT_KERNELS_CPU_ARCH DEBUG CUDA_HOME
BUILD_ENV_LINE := $(foreach v,$(BUILD_ENV_VARS),$(v)=$($(v)))
BUILD_INPUTS := $(shell find csrc -path csrc/simt -prune -o -print) setup.py pyproject.toml $(BUILD_ENV) \
	$(wildcard $(VENV)/pyvenv.cfg $(VENV)/lib/python*/site-packages/torch/version.py)
BUILD_OUTPUTS := $(VENV)/pyvenv.cfg $(VENV)/bin/mdt mdt_kernels/_C.*so
BUILD_MISSING := $(strip $(foreach f,$(BUILD_OUTPUTS),$(if $(wildcard $(f)),,$(f))))

build: $(BUILT)

# --no-build-isolation: build against the torch in the venv (isolation would fetch a CUDA torch).
# --no-deps: torch and friends are installed above, never resolved by pip here.
# The stamp takes the time the build started, so that a source edited during the build counts as newer.
$(BUILT): $(BUILD_INPUTS) $(if $(BUILD_MISSING),FORCE) | venv
	@mkdir -p $(@D) && touch $@.started
	$(PIP) --no-build-isolation --no-deps -e .
	@mv $@.started $@

# Rewritten (so newer than the stamp) only when a switch's value differs from the last run's.
$(BUILD_ENV): FORCE
	@mkdir -p $(@D)
	@echo '$(BUILD_ENV_LINE)' | cmp -s - $@ || echo '$(BUILD_ENV_LINE)' > $@

FORCE:

# The test suite's CUDA simulator (tests/cuda_sim): csrc/cuda's kernels and bindings on csrc/simt, a library of
# its own under build/cuda_sim that the tests attach to mdt_kernels as the cuda_sim backend. Its ninja build
# compiles only what changed (a second run: a second or so).
sim: venv
	MAX_JOBS=$${MAX_JOBS:-2} $(VPY) tests/cuda_sim/build.py

test: build sim
	$(VPY) -m pytest -q

# The cuda_sim tests under AddressSanitizer + UBSan (out-of-bounds global and shared memory, undefined
# behaviour; the shared-memory race check runs in `make test`'s plain build, whose -fsanitize=thread
# instrumentation cannot share a build with ASan): builds the simulator with them (build/cuda_sim_asan) and
# runs its tests with libasan preloaded into Python, and libstdc++ with it (else ASan's __cxa_throw interceptor
# finds no real one, as Python itself does not link libstdc++, and the first C++ exception aborts).
# --capture=sys: a sanitizer's report (written to fd 2 just before it aborts) reaches the terminal instead of
# pytest's lost capture.
SANITIZE_TESTS ?= tests/ops tests/test_simt.py
test-sanitize: build
	MAX_JOBS=$${MAX_JOBS:-2} $(VPY) tests/cuda_sim/build.py --asan
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 MDT_CUDA_SIM=asan SIMT_RACECHECK=1 \
		$(VPY) -m pytest -q --capture=sys -p no:cacheprovider -k cuda_sim $(SANITIZE_TESTS)

# The default job: a small MDTv2 on scikit-learn's 8x8 digits, on this machine's CPU (or its GPU).
# Writes $(TRAIN_OUT)/{checkpoints/,metrics.jsonl,loss.png,samples.png,eval.json}. Running it again
# continues (or, when finished, re-evaluates) the run in $(TRAIN_OUT); add options with TRAIN_ARGS=.
TRAIN_OUT ?= runs/digits
TRAIN_ARGS ?=
train: build
	$(VENV)/bin/mdt train --model MDTv2-Ti/2 --data digits --batch-size 64 --steps 3000 --lr 2e-3 \
		--ema-decay 0.995 --log-every 100 --ckpt-every 500 --out $(TRAIN_OUT) --resume auto $(TRAIN_ARGS)

bench: build
	$(VPY) -m benchmarks.profile_ops

bench-optim: build
	$(VPY) -m benchmarks.optim_step

bench-micro: build
	$(VPY) -m pytest benchmarks/micro -q --benchmark-only

lint: venv
	$(VPY) -m ruff check mdt mdt_kernels tests benchmarks

clean:
	rm -rf build *.egg-info mdt_kernels/*.so
