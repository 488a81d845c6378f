"""Serving benchmark: the service against the HTTP floor, one worker on one core (issue #7).

`python -m benchmarks.serving` (or `make bench-serve`) builds or reuses its own ML-100K bundles,
starts a local redis-server, the service (`python -m service`) pinned to one core and, in the same
run, a reference FastAPI app (`benchmarks.serving.floor`) on the same uvicorn settings that only
parses the same request body and returns a same-sized response. wrk, pinned to the other core,
loads each in turn; results go to `benchmarks/results/serving.json` and `serving.md`.
"""
