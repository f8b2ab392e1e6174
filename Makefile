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

.PHONY: demo demo-aist test venv clean-demo bench

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
	$(PY) testwav.py --npz $(DEMO)/whole/$${song}_full_gen.npz --out_dir $(DEMO)/wav --device cpu --video && \
	echo "  whole dance    $(DEMO)/wav/$${song}_full_gen.wav (mel plot $(DEMO)/whole/$${song}_full.png)" && \
	echo "  dance video    $(DEMO)/wav/$${song}_full_gen.mp4 (the dancer with the music the model made)"

# Every stage on a small AIST++-layout dataset (sometest/make_aist_data.py), the field's split and table.
AIST := $(DEMO)/aist
DEMO_AIST_STEPS ?= 400
demo-aist: venv
	$(PY) sometest/make_aist_data.py --out $(AIST) --force
	$(PY) preprocess.py --data_root $(AIST)/aist_plusplus_final --out_dir $(AIST)/lm2a --workers 2
	$(PY) newsplit_npz.py --npz_dir $(AIST)/lm2a/clips --out_dir $(AIST)/split --preset aistpp --force
	$(PY) train.py --npz_dir $(AIST)/split/train --val_npz_dir $(AIST)/split/val --save_dir $(AIST)/runs/tiny \
	    --force --max_steps $(DEMO_AIST_STEPS) --batch_size 8 --base_dim 32 --dim_mults 1,2 --stem_channels 8 \
	    --val_every 200 --save_every 200 --device cpu
	$(PY) val.py --ckpt $(AIST)/runs/tiny --npz_dir $(AIST)/split/test --out_dir $(AIST)/val --device cpu
	seq=$$(ls $(AIST)/split/test | head -1 | sed 's/__.*//') && music=$$(echo $$seq | sed 's/.*_\(m[A-Z][A-Z][0-9]\)_.*/\1/') && \
	$(PY) sample.py --ckpt $(AIST)/runs/tiny --motion $(AIST)/aist_plusplus_final/motions/$$seq.pkl \
	    --audio $$(ls $(AIST)/music/$$music.* | head -1) --out_dir $(AIST)/whole --guidance 2.0 --device cpu && \
	$(PY) testwav.py --npz $(AIST)/whole/$${seq}_full_gen.npz --out_dir $(AIST)/wav --device cpu --video && \
	echo && cat $(AIST)/val/field_table.md && echo && \
	echo "demo-aist done: the field's table $(AIST)/val/field_table.md (report $(AIST)/val/report.html)," && \
	echo "  a whole sequence's music $(AIST)/wav/$${seq}_full_gen.wav (video $(AIST)/wav/$${seq}_full_gen.mp4)"

bench: venv
	$(PY) sometest/bench.py --json BENCHMARKS.json

clean-demo:
	rm -rf $(DEMO)
