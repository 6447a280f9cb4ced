# Set-up and everyday targets. `make test` on a fresh machine installs everything it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
APT_PACKAGES := fluidsynth fluid-soundfont-gm libsndfile1 libportaudio2
export OMP_NUM_THREADS ?= 2

.PHONY: setup apt test test-slow lint format demo clean default-model model-data model-codec

$(APT_STAMP):
	@mkdir -p $(VENV)
	@if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "apt-get not found: install $(APT_PACKAGES) with your package manager"; fi
	@touch $@

$(STAMP): pyproject.toml | $(APT_STAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, from the local CPU build: no CUDA wheels are pulled
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

apt: $(APT_STAMP)
setup: $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- the embedded default model, stage by stage (each resumable: re-run the same target after a cut) ----------------
MODEL_WORK ?= .cache/default-model
MODEL_DATA := $(MODEL_WORK)/synth16k

model-data: setup
	$(BIN)/imusic data synth --tracks 400 --seconds 30 --sample-rate 16000 --seed 0 -o $(MODEL_DATA) --quiet \
	  $$( [ -f $(MODEL_DATA)/dataset.json ] && echo --resume )

model-codec: model-data
	if [ -f $(MODEL_WORK)/codec/codec_ckpt.pt ]; then \
	  $(BIN)/imusic train --stage codec --resume -o $(MODEL_WORK)/codec --quiet; \
	else \
	  $(BIN)/imusic train --stage codec --data $(MODEL_DATA) -o $(MODEL_WORK)/codec --steps 6000 --quiet; \
	fi
