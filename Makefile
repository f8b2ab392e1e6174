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
DEMO_STEPS ?= 600
demo: venv
	$(PY) sometest/make_demo_data.py --out $(DEMO)/JustLMD --songs 8 --seconds 60 --force
	$(PY) preprocess.py --data_root $(DEMO)/JustLMD --out_dir $(DEMO)/lm2a --workers 2
	$(PY) newsplit_npz.py --npz_dir $(DEMO)/lm2a/clips --out_dir $(DEMO)/split --force
	$(PY) train.py --npz_dir $(DEMO)/split/train --val_npz_dir $(DEMO)/split/val --save_dir $(DEMO)/runs/tiny \
	    --force --max_steps $(DEMO_STEPS) --batch_size 8 --base_dim 32 --dim_mults 1,2 --stem_channels 8 \
	    --val_every 250 --save_every 250 --device cpu
	$(PY) sometest/plot_losses.py $(DEMO)/runs/tiny --out $(DEMO)/runs/tiny/losses.png
	$(PY) sample.py --ckpt $(DEMO)/runs/tiny --npz_dir $(DEMO)/split/test --out_dir $(DEMO)/generated \
	    --guidance 2.0 --device cpu
	$(PY) val.py --ckpt $(DEMO)/runs/tiny --npz_dir $(DEMO)/split/test --gen_dir $(DEMO)/generated \
	    --out_dir $(DEMO)/val --device cpu
	$(PY) testwav.py --npz_dir $(DEMO)/generated --out_dir $(DEMO)/wav --device cpu
	@echo
	@echo "demo done:"
	@echo "  wav files      $(DEMO)/wav/"
	@echo "  mel plots      $(DEMO)/generated/*.png, $(DEMO)/val/*.png, loss curves $(DEMO)/runs/tiny/losses.png"
	@echo "  metrics        $(DEMO)/val/summary.json (per clip: $(DEMO)/val/per_clip.csv)"
	@echo "  report         $(DEMO)/val/report.html (open it in a browser: players, mels, attention)"
	@echo "  training-time samples  $(DEMO)/runs/tiny/samples/"
	song=$$($(PY) -c "import json; print(json.load(open('$(DEMO)/split/split.json'))['sets']['test']['songs'][0])") && \
	$(PY) sample.py --ckpt $(DEMO)/runs/tiny --song $$(ls -d $(DEMO)/JustLMD/Songs_*/$$song | head -1) \
	    --out_dir $(DEMO)/whole --guidance 2.0 --device cpu && \
	$(PY) testwav.py --npz $(DEMO)/whole/$${song}_full_gen.npz --out_dir $(DEMO)/wav --device cpu && \
	echo "  whole dance    $(DEMO)/wav/$${song}_full_gen.wav (mel plot $(DEMO)/whole/$${song}_full.png)"

bench: venv
	$(PY) sometest/bench.py --json BENCHMARKS.json

clean-demo:
	rm -rf $(DEMO)
