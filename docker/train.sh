#!/usr/bin/env bash
# The compose stack's training job: train `control` and `mail` on MovieLens 100K, export both to
# $MAILREC_BUNDLE_DIR (a volume), then exit so that the service starts. Runs once: bundles that are
# already there are kept unless MAILREC_RETRAIN=1. Same recipe as `make run` (scripts/run.sh).
#
# The data is never in the image (the MovieLens license forbids redistribution): it is read from
# MAILREC_DATA_DIR when that holds ml-100k/, else downloaded from GroupLens into MAILREC_CACHE_DIR
# (a volume) and checked against its sha256 sums.
set -euo pipefail
BUNDLES="${MAILREC_BUNDLE_DIR:-/bundles}"
PROTOCOL="${MAILREC_RUN_PROTOCOL:-strict}"  # strict: new users are unknown ids, as online
RUNS="$(mktemp -d)"
trap 'rm -rf "$RUNS"' EXIT

if [ "${MAILREC_RETRAIN:-0}" != 1 ] \
   && [ -f "$BUNDLES/control/manifest.json" ] && [ -f "$BUNDLES/mail/manifest.json" ]; then
  echo "==> bundles already in $BUNDLES (set MAILREC_RETRAIN=1 to train again)"
  exit 0
fi

DATA_DIR="${MAILREC_DATA_DIR:-}"
if [ -z "$DATA_DIR" ] || [ ! -d "$DATA_DIR/ml-100k" ]; then
  echo "==> downloading MovieLens 100K into ${MAILREC_CACHE_DIR:-the cache}"
  DATA_DIR="$(python -c 'from model_export.data import download_movielens; print(download_movielens().parent)')"
fi

for model in control mail; do
  echo "==> training $model (ml-100k, $PROTOCOL protocol)"
  python -m model_export train --dataset ml-100k --data-dir "$DATA_DIR" --protocol "$PROTOCOL" \
      --task catalog --model "$model" --ranker base --behavior clicks --seed 0 --out "$RUNS/$model"
  echo "==> exporting $model to $BUNDLES/$model"
  # export writes a temporary folder beside the target and swaps it in once verified
  python -m model_export export --run "$RUNS/$model" --out "$BUNDLES/$model"
done
