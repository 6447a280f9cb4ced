#!/usr/bin/env bash
# The prepared device run of issue #18 (engine/tools/gpu_check.py says what it measures).
#   bash engine/tools/gpu_check.sh "$OUT"           GPU: decode + edit speed, under 4 minutes
#   bash engine/tools/gpu_check.sh "$OUT" --tiny    dry run on CPU at the tiny shape
# Writes $OUT/bench_log.txt and $OUT/bench.json; run from the repository root.
set -u
out="${1:?usage: gpu_check.sh OUT [--tiny] [--budget S] [--only STAGES]}"
shift
cd "$(dirname "$0")/../.." || exit 1
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
        python=.venv/bin/python
    else
        python=python3
    fi
fi
exec "$python" -u -m engine.tools.gpu_check "$out" "$@"
