"""Benchmarks: offline quality (`benchmarks.offline`) and serving speed (`benchmarks.serving`)."""
