"""The harness tests and benchmarks share: real processes on free ports, the experiments file they
serve, and the /metrics text they read back."""
