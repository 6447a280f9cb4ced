#!/usr/bin/env bash
# The embedded model's recipe on an accelerator machine, as one device command (docs/embedded_model/gpu_recipe.md):
#
#   bash engine/train/gpu_recipe.sh "$OUT" [BUDGET_MINUTES]        (from the repo root; carry .carry)
#
# Installs the carried wheels (.carry/wheels, made here by `make model-gpu-carry`) with --no-deps into /tmp/site,
# checks the recipe end to end at tiny scale on the GPU (seconds, at most PREFLIGHT_S; PREFLIGHT=0 skips it; a failure
# is logged, not fatal), then runs the full recipe within BUDGET_MINUTES, unbuffered. Without one, the budget is what
# is left of the device command's limit LIMIT_S (default 600: the run's timeout_s; set it lower when the device has
# less time left) after the install and the preflight, less MARGIN_S (70 s) for the recipe's start-up, its last
# export and its overruns. Each stage's packs and card.json land in OUT as the stage ends, and the
# whole log is OUT/run.log, so a run cut at any point returns what it finished. With .carry/packs (an earlier run's
# returned files) the finished stages are restored and skipped. OUT receives at most 7 files, each <= 15 MiB:
# run.log, card.json, codec.tar.00, base.tar.00, base.tar.01, adapters.tar.00, eval.tar.00.
set -u -o pipefail
OUT=${1:?usage: bash engine/train/gpu_recipe.sh OUT [BUDGET_MINUTES]}
BUDGET=${2:-${BUDGET_MINUTES:-}}
LIMIT=${LIMIT_S:-600}
MARGIN=${MARGIN_S:-70}  # the recipe's start-up, its last export, the eval's first batches and overruns
RUN=${RUN_DIR:-/tmp/imusic-run}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
TEE=$!
trap 'exec >&- 2>&-; wait "$TEE" 2>/dev/null' EXIT  # the log's last lines reach run.log before the command ends
if [ -n "$BUDGET" ]; then SAYS="$BUDGET min"; else SAYS="what is left of ${LIMIT} s"; fi
echo "gpu_recipe: $(date -u +%FT%TZ) budget $SAYS, run dir $RUN, out $OUT"

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
if [ "${WHEELS:-1}" = 1 ]; then  # WHEELS=0: the packages are there already (the CPU test of this script)
  shopt -s nullglob
  wheels=(.carry/wheels/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "gpu_recipe: no wheels in .carry/wheels: run 'make model-gpu-carry' here and carry .carry" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" \
    || { echo "gpu_recipe: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # every load is local; no network there to wait for
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c "import torch, transformers, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__, 'numpy', numpy.__version__)"

preflight=""
if [ "${PREFLIGHT:-1}" = 1 ]; then
  # Bounded, and not a gate: each full-scale stage exports as it ends, so a fault that only a later stage (or only the
  # tiny scale) meets still lets the stages before it come back; the log says the preflight failed and where.
  # (about 13 s on 2 CPU cores; the bound is what a hang there may cost the full run)
  echo "gpu_recipe: preflight (tiny scale on $DEVICE, at most ${PREFLIGHT_S:-60} s)"
  rm -rf /tmp/imusic-preflight
  timeout "${PREFLIGHT_S:-60}" "$PY" -m engine.train.recipe run -o /tmp/imusic-preflight --scale tiny \
    --budget-minutes 2 --device "$DEVICE" --quiet \
    || { preflight=$?; echo "gpu_recipe: PREFLIGHT FAILED (exit $preflight, above); running the full recipe anyway" >&2; }
fi

if [ -z "$BUDGET" ]; then
  BUDGET=$(awk -v limit="$LIMIT" -v used="$SECONDS" -v margin="$MARGIN" \
    'BEGIN { printf "%.2f", (limit - used - margin) / 60 }')
  echo "gpu_recipe: ${SECONDS} s used before the full run; its budget: ${BUDGET} min"
fi
from=()
if [ -n "$(ls .carry/packs/*.tar.* 2>/dev/null)" ]; then from=(--from-packs .carry/packs); fi
"$PY" -m engine.train.recipe run -o "$RUN" --scale "${SCALE:-full}" --budget-minutes "$BUDGET" --device "$DEVICE" \
  --export "$OUT" --quiet "${from[@]}"
status=$?
echo "gpu_recipe: recipe exit $status${preflight:+; preflight exit $preflight}; returned:"
ls -la "$OUT"
exit $status
