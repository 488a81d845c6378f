#!/usr/bin/env bash
# `make run`: data, training of `control` and `mail`, export, then the service on an embedded Redis
# with the default experiment (control vs mail, 50/50). Bundles already in bundles/ are reused;
# MAILREC_RETRAIN=1 trains again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${MAILREC_PORT:-8000}"
HOST="${MAILREC_HOST:-127.0.0.1}"

DATA_DIR="${MAILREC_DATA_DIR:-}"
if [ -z "$DATA_DIR" ]; then
  echo "==> MAILREC_DATA_DIR is not set: downloading MovieLens 100K into the cache"
  $PY -m model_export download
  DATA_DIR="$($PY -c 'from model_export.data import default_cache; print(default_cache())')"
fi
echo "==> data: $DATA_DIR"

for model in control mail; do
  if [ -z "${MAILREC_RETRAIN:-}" ] && $PY -c "from service.contract import load_bundle; load_bundle('bundles/$model')" 2>/dev/null; then
    echo "==> bundles/$model is valid: reusing it (MAILREC_RETRAIN=1 to train again)"
    continue
  fi
  # strict protocol: new users are ids the model never saw, as they are online; the catalog task:
  # rank the whole catalog (chosen items against sampled never-chosen ones), as the service does
  echo "==> training $model (MovieLens 100K, strict protocol, catalog task, BaseDNN ranker)"
  $PY -m model_export train --dataset ml-100k --data-dir "$DATA_DIR" --protocol strict --task catalog \
      --model "$model" --ranker base --behavior clicks --seed 0 --out "runs/$model"
  echo "==> exporting $model"
  $PY -m model_export export --run "runs/$model" --out "bundles/$model"
done

echo "==> starting the service on http://$HOST:$PORT (embedded Redis)"
MAILREC_REDIS_EMBEDDED=1 MAILREC_BUNDLE_DIR=bundles MAILREC_HOST="$HOST" MAILREC_PORT="$PORT" $PY -m service &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null' INT TERM EXIT
ready() { $PY -c "import urllib.request as u; u.urlopen('http://$HOST:$PORT/readyz', timeout=1)" 2>/dev/null; }
until ready; do
  if ! kill -0 $service 2>/dev/null; then echo "the service exited" >&2; exit 1; fi
  sleep 0.2
done
cat <<EOF

mailrec is serving on http://$HOST:$PORT   (API docs: http://$HOST:$PORT/docs)
Try a new user:

  curl -s -X POST http://$HOST:$PORT/recommend -H 'Content-Type: application/json' \\
       -d '{"user_id": "new-user-1", "attributes": {"age": 31, "gender": "F", "occupation": "engineer", "zip": "94110"}, "k": 5}'

Ctrl-C stops it.
EOF
wait $service
