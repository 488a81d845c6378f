"""Offline quality benchmark: cold-start methods under one split and one ranking tower each."""
