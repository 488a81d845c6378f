#!/usr/bin/env bash
# `make run`: data, training of `control` and `mail`, export, then the service (when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA_DIR="${MAILREC_DATA_DIR:-}"
if [ -z "$DATA_DIR" ]; then
  echo "==> no MAILREC_DATA_DIR: downloading MovieLens 100K into the cache"
  DATA_DIR="$($PY -c 'from model_export.data import download_movielens; print(download_movielens().parent)')"
fi
PROTOCOL="${MAILREC_RUN_PROTOCOL:-strict}"  # strict: new users are unknown ids, as online
for model in control mail; do
  echo "==> training $model (ml-100k, $PROTOCOL protocol)"
  $PY -m model_export train --dataset ml-100k --data-dir "$DATA_DIR" --protocol "$PROTOCOL" \
      --model "$model" --ranker base --behavior clicks --seed 0 --out "runs/$model"
  echo "==> exporting $model"
  $PY -m model_export export --run "runs/$model" --out "bundles/$model"
done
