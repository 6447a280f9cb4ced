"""Tooling shipped with the engine: the decode benchmark (bench.py) and random-weight models written in every real
layout (tiny_models.py), for benchmarks, tests and trying the plumbing without gigabytes of weights."""
