#!/usr/bin/env bash
# GPU smoke test: every training and inference rule for one epoch on a small synthetic slice at the
# config/cytologia.yaml settings (backbones, image sizes, batch sizes, AMP, channels_last), then the
# throughput of each rule in $OUT/throughput.tsv.
#
#   tests/gpu/smoke.sh OUT_DIR [extra config overlays...]
#
# On one GPU it should finish within 10 minutes. The pretrained weights are not needed (random
# initialisation; nothing is downloaded). tests/test_gpu_smoke.py runs it on CPU at toy size by
# adding tests/gpu/toy.yaml as an overlay.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:?usage: tests/gpu/smoke.sh OUT_DIR [config overlays...]}"
shift
mkdir -p "$OUT/run"
export PYTHONPATH="$REPO/workflow${PYTHONPATH:+:$PYTHONPATH}"
SNAKEMAKE="${SNAKEMAKE:-snakemake}"
PYTHON="${PYTHON:-python}"
started=$(date +%s)
"$SNAKEMAKE" --snakefile "$REPO/Snakefile" --directory "$OUT/run" --cores "${CORES:-4}" \
    --configfile "$REPO/config/cytologia.yaml" "$REPO/tests/gpu/smoke.yaml" "$@" \
    --rerun-incomplete results/submission.csv results/classification/summary.json results/bundle
"$PYTHON" "$REPO/tests/gpu/throughput.py" "$OUT/run" "$OUT/throughput.tsv"
echo "smoke run took $(( $(date +%s) - started )) s; throughput per rule in $OUT/throughput.tsv"
