"""Serving benchmark: the service against the HTTP floor, one worker on one core (issue #7).

`python -m benchmarks.serving` (or `make bench-serve`) builds or reuses its own ML-100K bundles,
starts a local redis-server, the service (`python -m service`) pinned to one core and, in the same
run, a reference FastAPI app (`benchmarks.serving.floor`) on the same uvicorn settings that only
parses the same request body and returns a same-sized response. wrk, pinned to the other core,
loads each in turn (closed loop: 32 connections, then 1). For the cold cached user and the whole
catalog it then offers the service 25, 50, 75, 90 and 100% of the req/s it just reached, on a fixed
schedule (`benchmarks.serving.openloop`: latency counted from each request's scheduled time, so
queueing is not hidden): p50/p99 against offered load, and the knee. Results go to
`benchmarks/results/serving.json` and `serving.md`.
"""
