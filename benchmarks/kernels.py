"""Where a call's time goes: the compiled kernels it runs, from a `jax.profiler` trace.

For each model of benchmarks/run.py and each library that expresses it: per training step, density
evaluation and sampling call, the wall time, the kernels run and their summed time, and the most
expensive kernels. On a GPU the kernels are the device's (fusions, GEMMs, copies); on a CPU, the
fused loops XLA's runtime reports, which run on several threads at once, so their sum can exceed
the wall time. A call far slower than its kernels is bound by dispatch and launch overhead. Wall
times here run under the profiler, which adds its own overhead: benchmarks/run.py is for timings.

    python -m benchmarks.kernels --models realnvp --compare distrax --measures log_prob,sample
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import tempfile
import time
from pathlib import Path

import jax

from benchmarks import peers
from benchmarks._common import check_names, environment, markdown_table, positive_int, write_json
from benchmarks.compile_depth import available
from benchmarks.run import EVAL_BATCH, MEASURES, MODELS, event_shapes, prepare_model

# XLA's CPU runtime reports control flow as events enclosing the kernels of its body.
_ENCLOSING = ("while", "conditional", "call")


def kernel_times(events: list[dict], calls: int) -> dict[str, tuple[float, float]]:
    """Per kernel name: (microseconds, launches) per call, from a perfetto trace's events.

    Kernels are the complete ('X') events of a device process (GPU, TPU), or, without one, the
    events that name the HLO module they ran (XLA's CPU runtime), control flow excluded.
    """
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in processes.items() if "/device:" in name}

    def is_kernel(event):
        if event.get("ph") != "X" or "dur" not in event:
            return False
        if device_pids:
            return event["pid"] in device_pids
        return "hlo_module" in event.get("args", {}) and not event["name"].startswith(_ENCLOSING)

    totals = collections.defaultdict(lambda: [0.0, 0])
    for event in filter(is_kernel, events):
        totals[event["name"]][0] += event["dur"]
        totals[event["name"]][1] += 1
    return {name: (micros / calls, launches / calls) for name, (micros, launches) in totals.items()}


def traced_events(call, calls: int) -> tuple[list[dict], float]:
    """The trace events of `calls` runs of `call`, and their wall time in seconds."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(calls):
                call()
            seconds = time.perf_counter() - start
        (trace,) = Path(directory).glob("plugins/profile/*/perfetto_trace.json.gz")
        payload = json.loads(gzip.decompress(trace.read_bytes()))
    return (payload["traceEvents"] if isinstance(payload, dict) else payload), seconds


def profile_row(ready, measure: str, *, calls: int, top: int) -> dict:
    """A model prepared with `train_steps=1`: its kernels per training step, or per batch."""
    events, seconds = traced_events(ready.calls[measure], calls)
    single_calls = calls * ready.repeats[measure]  # each timed call repeats a short one
    kernels = kernel_times(events, single_calls)
    ranked = sorted(kernels.items(), key=lambda item: -item[1][0])
    return {
        "measure": measure,
        "wall_us": 1e6 * seconds / single_calls,
        "kernel_us": sum(micros for micros, _ in kernels.values()),
        "kernels": sum(launches for _, launches in kernels.values()),
        "top": [{"name": name, "us": micros, "launches": launches} for name, (micros, launches) in ranked[:top]],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="realnvp", help="comma-separated names from benchmarks.run.MODELS")
    parser.add_argument("--compare", default="flowjax,distrax", help="comma-separated peers ('' for none)")
    parser.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated, from {MEASURES}")
    parser.add_argument("--dim", type=positive_int, default=16, help="event size of the vector models")
    parser.add_argument("--train-batch", type=positive_int, default=512)
    parser.add_argument("--eval-batch", type=positive_int, default=EVAL_BATCH)
    parser.add_argument("--calls", type=positive_int, default=5, help="traced timings per measure")
    parser.add_argument("--top", type=positive_int, default=8, help="kernels listed per row")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    check_names(parser, "models", args.models, MODELS)
    check_names(parser, "measures", args.measures, MEASURES)
    if args.compare:
        check_names(parser, "compare", args.compare, peers.LIBRARIES)
    libraries = available(["jaxflow", *[p for p in args.compare.split(",") if p]])

    print(environment())
    rows = []
    for name in args.models.split(","):
        event_shape = event_shapes(name, [args.dim])[0]
        for library in libraries:
            model = peers.build(library, name, jax.random.key(1), event_shape, **MODELS[name])
            if model is None:
                print(f"note: {library} cannot express {name}; skipped")
                continue
            ready = prepare_model(model, event_shape, train_batch=args.train_batch, eval_batch=args.eval_batch,
                                  train_steps=1)
            for measure in args.measures.split(","):
                row = {"model": name, "library": library,
                       **profile_row(ready, measure, calls=args.calls, top=args.top)}
                rows.append(row)
                print(f"{name} {library} {measure}: " + ", ".join(
                    f"{kernel['name']} {kernel['us']:.1f} us x{kernel['launches']:.0f}" for kernel in row["top"]))
    print(markdown_table(rows, ["model", "library", "measure", "wall_us", "kernel_us", "kernels"]))
    write_json(args.out, {"benchmark": "kernels", "environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
