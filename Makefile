# Two set-up commands for a fresh machine; each creates .venv and installs what it needs first.
#   make demo   - demo dataset + every stage on CPU (see README)
#   make test   - the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := demo
TORCH  ?= torch==2.13.0
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv clean-demo bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

# Every stage on the demo data, on CPU. Outputs land in $(DEMO)/ (git-ignored).
demo: venv
	$(PY) sometest/make_demo_data.py --out $(DEMO)/JustLMD --force
	$(PY) preprocess.py --data_root $(DEMO)/JustLMD --out_dir $(DEMO)/lm2a --workers 2
	$(PY) newsplit_npz.py --npz_dir $(DEMO)/lm2a/clips --out_dir $(DEMO)/split --force

bench: venv
	$(PY) sometest/bench.py --json BENCHMARKS.json

clean-demo:
	rm -rf $(DEMO)
