# Set-up and everyday targets. `make test` on a fresh machine installs everything it needs first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
APT_STAMP := $(VENV)/.apt-installed
APT_PACKAGES := python3-venv fluidsynth fluid-soundfont-gm libsndfile1 libportaudio2
export OMP_NUM_THREADS ?= 2

.PHONY: setup setup-test apt test test-slow lint format demo clean default-model model-data model-codec model-base model-adapters \
	model-mask-depth model-eval model-acceptance model-gpu model-gpu-carry model-gpu-install

$(APT_STAMP):
	@mkdir -p $(VENV)
	@if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "apt-get not found: install $(APT_PACKAGES) with your package manager"; fi
	@touch $@

# torch first, the build that fits this machine (bridge/torch_setup.py says which and why), then the project.
$(STAMP): pyproject.toml | $(APT_STAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m bridge.torch_setup
	$(BIN)/pip install -q -e .
	@touch $@

# The test tools (pytest, ruff, ray for the cluster backend) only where tests run: the demo needs none of them.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	# the GPU recipe's renderer, tested here at tiny scale; --no-deps: its pyaudio requirement is for playback only
	$(BIN)/pip install -q --no-deps tinysoundfont
	@touch $@

apt: $(APT_STAMP)
setup: $(STAMP)
setup-test: $(TEST_STAMP)

test: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: setup-test
	$(BIN)/python -m pytest -q -m slow

lint: setup-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup-test
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- the embedded default model, stage by stage (each resumable: re-run the same target after a cut) ----------------
MODEL_WORK ?= .cache/default-model
MODEL_DATA := $(MODEL_WORK)/synth16k
CODEC_STEPS ?= 5000
CODEC_WAVE_STEPS ?= 4000
CODEC_LEVEL_STEPS ?= 1500
BASE_STEPS ?= 2500
ADAPTER_STEPS ?= 900

# --once (data synth, train, eval): a finished step is left as it is, a cut one resumes, a new one starts.
model-data: setup
	$(BIN)/imusic data synth --tracks 400 --seconds 30 --sample-rate 16000 --seed 0 -o $(MODEL_DATA) --quiet --once

# Stage 1, the codec, in four runs (each resumable; each later one starts from the one before, with a fresh schedule):
# 5000 steps of L1 + multi-resolution STFT, 5000 more of the same, 4000 with the waveform's normalised MSE added, then
# 1500 without it. The first two alone left a decoder that turns every tone into a 50 Hz buzz; the MSE brings the
# pitch back but dulls the level, which the last run restores (docs/embedded_model/codec.md).
define codec_run
	$(BIN)/imusic train --stage codec --once --data $(MODEL_DATA) -o $(MODEL_WORK)/$(1) $(2) --quiet
endef

model-codec: model-data
	$(call codec_run,codec_1,--steps $(CODEC_STEPS) --quantize-after 1000)
	$(call codec_run,codec_2,--init-codec $(MODEL_WORK)/codec_1/codec --steps $(CODEC_STEPS))
	$(call codec_run,codec_3,--init-codec $(MODEL_WORK)/codec_2/codec --wave-mse 2.0 --steps $(CODEC_WAVE_STEPS))
	$(call codec_run,codec,--init-codec $(MODEL_WORK)/codec_3/codec --steps $(CODEC_LEVEL_STEPS))

# Stage 2: a text-to-music base model from scratch on the frozen codec (clips encoded once into a pool, bf16 autocast).
model-base: model-codec
	$(BIN)/imusic train --stage base --once --base $(MODEL_WORK)/codec/codec --data $(MODEL_DATA) \
	  -o $(MODEL_WORK)/base --layers 4 --dim 256 --heads 4 --text-dim 128 --steps $(BASE_STEPS) --batch 16 --accum 1 \
	  --lr 1e-3 --warmup 100 --grad-clip 1.0 --precision bf16 --pool 16 --ckpt-every 100 --val-every 200 --log-every 25

# Stage 3: the Instruct adapters (audio fusion on every layer + LoRA on cross-attention q, v) on the frozen base.
# At lr 1e-3 the zero-init gates had barely moved after 400 steps (validation loss flat): 3e-3, gates 1e-2.
model-adapters: model-base
	$(BIN)/imusic train --stage adapters --once --base $(MODEL_WORK)/base/model --data $(MODEL_DATA) \
	  -o $(MODEL_WORK)/adapters --window 5 --steps $(ADAPTER_STEPS) --batch 16 --accum 1 --lr 3e-3 --gate-lr 1e-2 \
	  --warmup 50 --precision bf16 --pool 8 --ckpt-every 100 --val-every 100 --log-every 25

# How far the mask mode trusts this model's word on a remove (its card's mask_depth), chosen on validation songs.
model-mask-depth: model-adapters
	$(BIN)/python -m engine.eval.mask_tune --data $(MODEL_DATA) --task remove --depth --clips-per-song 2 \
	  --model $(MODEL_WORK)/adapters/model --write-card -o $(MODEL_WORK)/mask_depth_remove.json

# Held-out test songs, every task, against the identity / codec / oracle rows; spectrograms of a few examples.
model-eval: model-mask-depth
	$(BIN)/imusic eval --once --data $(MODEL_DATA) --model $(MODEL_WORK)/adapters/model --task extract --task remove \
	  --task add --clips-per-song 2 --spectrograms 3 --seed 0 -o $(MODEL_WORK)/eval --quiet

# Copy the result into the package with its model card (sizes, data, stages, wall time, losses, evaluation).
default-model: model-eval
	$(BIN)/python -m engine.train.default_model --work $(MODEL_WORK)  # into engine/assets/default and docs/embedded_model

# The shipped model against its bars (engine/eval/acceptance.py): the test songs' report, a second test set rendered
# with a General MIDI soundfont the GPU recipe never trains on (MuseScore General, Debian's
# musescore-general-soundfont-small; the CPU recipe's FluidR3 shares samples with it: its instruments without
# attribution are FluidR3Mono's),
# the 10 s edit time here and the model's size; the table goes to docs/embedded_model/acceptance.md.
SECOND_SOUNDFONT := /usr/share/sounds/sf3/MuseScore_General_Lite.sf3
SECOND_TESTSET := .cache/testset-musescore
model-acceptance: setup
	@[ -f $(SECOND_SOUNDFONT) ] || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq musescore-general-soundfont-small >/dev/null; }
	$(BIN)/imusic data synth --tracks 100 --seconds 20 --sample-rate 16000 --seed 202 --soundfont $(SECOND_SOUNDFONT) \
	  --renderer fluidsynth --workers 2 -o $(SECOND_TESTSET) --quiet --once
	rm -rf .cache/eval-second
	$(BIN)/imusic eval --data $(SECOND_TESTSET) --split all --task extract --task remove --task add \
	  --clips-per-song 1 --limit 80 --spectrograms 0 --seed 0 -o .cache/eval-second --quiet
	cp .cache/eval-second/report.md docs/embedded_model/second_testset.md
	$(BIN)/python -m engine.eval.acceptance --report docs/embedded_model/report.json \
	  --second-report .cache/eval-second/report.json -o docs/embedded_model/acceptance.md

# The main job on the embedded default model: a held-out song, edits through the real server and client.
demo: setup
	$(BIN)/imusic demo -o demo_out

# ---- the embedded model on an accelerator in one recipe (docs/embedded_model/gpu_recipe.md) --------------------------
# model-gpu-carry: the wheels the bare accelerator machine lacks (Python 3.12 there), into the ignored .carry/wheels.
# model-gpu: the recipe here (cuda when there is one), within BUDGET_MINUTES. model-gpu-install: a returned run's files
# (GPU_PACKS) into engine/assets/default and docs/embedded_model.
CARRY := .carry
BUDGET_MINUTES ?= 8.5
GPU_PACKS ?= $(CARRY)/packs
GPU_WHEELS := tinysoundfont==0.3.7 soundfile==0.13.1 cffi==2.0.0 pycparser==2.22 pedalboard==0.9.26 mido==1.3.3 \
	importlib_resources==6.5.2

model-gpu-carry: setup
	# afresh: a wheel of an earlier version beside its successor makes the device's pip refuse the install
	rm -rf $(CARRY)/wheels && mkdir -p $(CARRY)/wheels
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d $(CARRY)/wheels $(GPU_WHEELS)
	$(BIN)/pip wheel -q --no-deps pretty_midi==0.2.11 -w $(CARRY)/wheels
	du -ch $(CARRY)/wheels/*.whl | tail -1

model-gpu: setup
	$(BIN)/imusic train --recipe embedded --budget-minutes $(BUDGET_MINUTES) -o $(MODEL_WORK)/gpu \
	  --export $(MODEL_WORK)/gpu-out $$( [ -d $(GPU_PACKS) ] && echo --from-packs $(GPU_PACKS) )

model-gpu-install: setup
	$(BIN)/python -m engine.train.recipe install $(GPU_PACKS)  # into engine/assets/default and docs/embedded_model
