"""Benchmarks: each script prints a markdown table and writes JSON; run as `python -m benchmarks.<name>`."""
