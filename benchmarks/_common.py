"""Shared benchmark plumbing: environment report, timing with medians, tables and JSON."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax


def environment() -> dict:
    """The device, JAX version and config every figure is reported with."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "x64": bool(jax.config.jax_enable_x64),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls; `fn` must block until its result is ready."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_seconds(fn, *args, repeats: int = 3) -> float:
    """Median time to trace, lower and compile `fn(*args)` from a cold cache."""

    def once():
        jax.clear_caches()
        jax.jit(fn).lower(*args).compile()

    return median_seconds(once, repeats)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as a markdown table; floats get 3 significant digits, shapes read like 8x8x1."""

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, tuple):
            return "x".join(str(size) for size in value)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def check_names(parser, option: str, given: str, known) -> None:
    """A usage error for any comma-separated name in `given` that `known` lacks, naming both."""
    unknown = sorted(set(given.split(",")) - set(known))
    if unknown:
        parser.error(f"unknown {option} {unknown}; expected names from {list(known)}")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (counts of repeats, steps, rows)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")
