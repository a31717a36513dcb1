"""Benchmarks run by hand (`python -m bench.<name>`); results are recorded in bench/RESULTS.md."""
