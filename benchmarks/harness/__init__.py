"""The harness tests and benchmarks share: real processes on free ports, the experiments file they
serve, the /metrics text they read back, and the command line a results file records."""
