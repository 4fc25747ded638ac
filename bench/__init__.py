"""Benchmarks of dspy-serve against the program's own ceiling and the naive FastAPI design.

Run everything with ``python -m bench.run`` (``--quick`` for a short pass); see bench/README.md.
"""
