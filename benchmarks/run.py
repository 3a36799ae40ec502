"""The benchmark suite: jaxflow against flowjax and distrax on identical models.

For each ready-made flow (realnvp: dim 16, 8 layers; maf: dim 16, 5 layers; nsf: dim 16, 8 layers,
8 bins; all MLP/MADE 2x128; and, jaxflow only, nice, iaf, autoregressive nsf, Flow++, residual,
planar, radial and Sylvester flows, and Glow on 8x8x1 images: 3 levels of 4 steps, CNN couplings
of 64 channels, the configuration of examples/glow_digits.py) and each library that can express it:
compile time of the training step (median of `--compile-repeats` compilations, each from cold JAX caches:
trace, lower and compile, as in a fresh process), training-step
time (Adam, batch 512), log_prob and sample throughput (batch 8192), and the training step's
achieved matrix-product FLOP/s (counted from the jaxpr, loops per iteration: benchmarks/flops.py)
as a fraction of a dense matmul timed in the same run. Vector flows run on events of shape (dim,)
for each of the suite's dims, image flows on their own (H, W, C); every row says its event shape.
Medians over repeats, each repeat timing every library in turn (so a change in the machine's load
reaches all of them alike), `block_until_ready` on every result; a call shorter than 20 ms is
repeated within one timing. Runs unchanged on CPU/GPU/TPU.
The `jaxflow-unrolled` rows are jaxflow's realnvp/maf/nsf with `unroll=True` (longer compile, no
loop); the `written-out` row is jaxflow's RealNVP written out in bare jax.numpy (the same params,
permutations and maths in one `lax.scan`, `peers.written_out_model`), a bare reference: what a
library takes beyond it is its abstractions' cost, what it saves its own optimisations.

    python -m benchmarks.run --suite quick --repeats 9 --out results/quick.json
    python -m benchmarks.run --suite full --compare flowjax,distrax,jaxflow-unrolled,written-out --out results/full.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from benchmarks import peers
from benchmarks._common import check_names, environment, markdown_table, median_seconds, positive_int, write_json
from benchmarks.compile_depth import available
from benchmarks.flops import matmul_flops

MODELS = {
    "realnvp": dict(layers=8, hidden=(128, 128)),
    "maf": dict(layers=5, hidden=(128, 128)),
    "nsf": dict(layers=8, hidden=(128, 128), bins=8),
    # jaxflow only (no peer expresses them); `bins` is Flow++'s number of mixture components.
    "nice": dict(layers=8, hidden=(128, 128)),
    "iaf": dict(layers=5, hidden=(128, 128)),
    "nsf_autoregressive": dict(layers=5, hidden=(128, 128), bins=8),
    "flowpp": dict(layers=8, hidden=(128, 128), bins=8),
    "residual": dict(layers=8, hidden=(128, 128)),
    "planar": dict(layers=16, hidden=()),
    "radial": dict(layers=16, hidden=()),
    "sylvester": dict(layers=8, hidden=()),
    "glow": dict(levels=3, steps_per_level=4, hidden_channels=64, num_blocks=0),
}
# Image flows run on one event shape (H, W, C) of their own; every other model on (dim,) for each suite dim.
IMAGE_SHAPES = {"glow": (8, 8, 1)}
SUITES = {
    "quick": dict(repeats=5, train_steps=20, dims=[16], train_batches=[512]),
    "full": dict(repeats=9, train_steps=50, dims=[4, 16, 64], train_batches=[128, 512, 2048]),
}
EVAL_BATCH = 8192
MIN_TIMED_S = 0.02  # shorter calls are repeated within one timing (see `_repeated`)


def event_shapes(name: str, dims) -> list[tuple[int, ...]]:
    """The event shapes `name` runs on: its image shape, or (dim,) for each of `dims`."""
    return [IMAGE_SHAPES[name]] if name in IMAGE_SHAPES else [(dim,) for dim in dims]


def _block(tree):
    return jax.block_until_ready(tree)


def train_step_fn(model, optimizer):
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(lambda p: -jnp.mean(model.log_prob(p, x)))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


MEASURES = ("train", "log_prob", "sample")


class Prepared(NamedTuple):
    """One model compiled and warmed up: its compile time, training-step FLOPs and timed calls."""

    compile_s: float  # the first compilation of the training step
    recompile: Callable  # compiles the training step afresh, for more compile timings
    train_flops: float
    calls: dict  # measure -> a call that blocks until its result is ready
    per_call: dict  # measure -> how many steps or events one call covers
    repeats: dict  # measure -> single calls (a training run of train_steps, or one batch) per call


def prepare_model(model, event_shape, *, train_batch, eval_batch, train_steps) -> Prepared:
    """Compiles the training step, log_prob and sample of one model on events of `event_shape`."""
    key = jax.random.key(0)
    x_train = jax.random.normal(key, (train_batch, *event_shape))
    x_eval = jax.random.normal(key, (eval_batch, *event_shape))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(model.params)
    step = train_step_fn(model, optimizer)

    def compile_step():  # a new step function from cold caches each time, as in a fresh process
        jax.clear_caches()
        return jax.jit(train_step_fn(model, optimizer)).lower(model.params, opt_state, x_train).compile()

    start = time.perf_counter()
    compiled = compile_step()
    compile_s = time.perf_counter() - start

    def train():
        params, state = model.params, opt_state
        for _ in range(train_steps):
            params, state, loss = compiled(params, state, x_train)
        _block(loss)

    # Compiled ahead of time: clearing the caches for another compile timing leaves them compiled.
    log_prob = jax.jit(model.log_prob).lower(model.params, x_eval).compile()
    sample = jax.jit(model.sample, static_argnums=2).lower(model.params, key, eval_batch).compile()
    single_calls = {
        "train": (train, train_steps),
        "log_prob": (lambda: _block(log_prob(model.params, x_eval)), eval_batch),
        "sample": (lambda: _block(sample(model.params, key)), eval_batch),
    }
    calls, per_call, repeats = {}, {}, {}
    for measure, (call, covered) in single_calls.items():
        call()  # warm-up
        calls[measure], repeats[measure] = _repeated(call)
        per_call[measure] = covered * repeats[measure]
    flops = matmul_flops(step, model.params, opt_state, x_train)
    return Prepared(compile_s, compile_step, flops, calls, per_call, repeats)


def _repeated(call) -> tuple[Callable, int]:
    """`call` repeated until one timing lasts MIN_TIMED_S, and how many times it then runs.

    A density evaluation on a GPU takes well under a millisecond, mostly dispatch and
    synchronisation: timed once, its median moved by 30% between runs. Each repeat still blocks.
    """
    repeats = max(1, math.ceil(MIN_TIMED_S / _seconds(call)))

    def repeated():
        for _ in range(repeats):
            call()

    return repeated, repeats


def measure_models(
    models: dict, event_shape, *, train_batch, eval_batch, repeats, train_steps, compile_repeats=1
) -> dict:
    """Per library: compile time, step time, throughputs and FLOP/s of its model on `event_shape`.

    The timings are interleaved: each repeat times every library in turn, so a change in the
    machine's load during the run reaches all of them alike. Medians over `repeats`, and for the
    compile time over `compile_repeats` compilations (the first repeats compile once more each,
    then call every measure once untimed: clearing JAX's caches slows each call's next dispatch,
    by 0.1 ms to 1.8 ms depending on the library).
    """
    prepared = {
        library: prepare_model(model, event_shape, train_batch=train_batch, eval_batch=eval_batch,
                               train_steps=train_steps)
        for library, model in models.items()
    }
    seconds = {
        library: {"compile": [ready.compile_s], **{measure: [] for measure in MEASURES}}
        for library, ready in prepared.items()
    }
    for repeat in range(max(repeats, compile_repeats - 1)):
        for library, ready in prepared.items():
            if repeat < compile_repeats - 1:
                seconds[library]["compile"].append(_seconds(ready.recompile))
                for call in ready.calls.values():  # after clearing the caches a call's first dispatch is slower
                    call()
            if repeat < repeats:
                for measure in MEASURES:
                    seconds[library][measure].append(_seconds(ready.calls[measure]))
    return {library: _summary(ready, seconds[library]) for library, ready in prepared.items()}


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _summary(ready: Prepared, seconds: dict) -> dict:
    step_s = statistics.median(seconds["train"]) / ready.per_call["train"]
    return {
        "compile_s": statistics.median(seconds["compile"]),
        "train_step_ms": 1e3 * step_s,
        "log_prob_per_s": ready.per_call["log_prob"] / statistics.median(seconds["log_prob"]),
        "sample_per_s": ready.per_call["sample"] / statistics.median(seconds["sample"]),
        "train_gflops": ready.train_flops / step_s / 1e9,
    }


def matmul_gflops(repeats: int, size: int = 1024) -> float:
    """Achieved GFLOP/s of a float32 dense matmul: the reference for FLOP/s fractions."""
    a = jax.random.normal(jax.random.key(0), (size, size))
    matmul = jax.jit(lambda a: a @ a)
    call = lambda: _block(matmul(a))  # noqa: E731
    call()  # warm-up
    repeated, count = _repeated(call)  # timed like the flows' calls, so that dispatch does not dominate
    return 2 * size**3 * count / median_seconds(repeated, repeats) / 1e9


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument(
        "--compare", default="flowjax,distrax,jaxflow-unrolled,written-out",
        help="comma-separated peers ('' for none); jaxflow-unrolled is jaxflow with unroll=True, "
        "written-out jaxflow's RealNVP in bare jax.numpy",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names from MODELS")
    parser.add_argument("--eval-batch", type=positive_int, default=EVAL_BATCH,
                        help="batch of the log_prob and sample timings")
    parser.add_argument("--repeats", type=positive_int, help="timings per median (default: the suite's)")
    parser.add_argument("--train-steps", type=positive_int, help="training steps per timing (default: the suite's)")
    parser.add_argument("--train-batch", type=positive_int, help="one training batch size instead of the suite's")
    parser.add_argument("--compile-repeats", type=positive_int, default=3, help="compilations per compile-time median")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    check_names(parser, "models", args.models, MODELS)
    if args.compare:
        check_names(parser, "compare", args.compare, peers.LIBRARIES)
    return args


def suite_settings(args) -> dict:
    """The suite's settings, with any given on the command line in their place."""
    settings = dict(SUITES[args.suite], eval_batch=args.eval_batch, compile_repeats=args.compile_repeats)
    overrides = {"repeats": args.repeats, "train_steps": args.train_steps}
    overrides["train_batches"] = None if args.train_batch is None else [args.train_batch]
    settings.update({name: value for name, value in overrides.items() if value is not None})
    return settings


def main(argv=None):
    args = parse_args(argv)
    settings = suite_settings(args)
    libraries = available(["jaxflow", *[p for p in args.compare.split(",") if p]])

    peak = matmul_gflops(settings["repeats"])
    print(f"{environment()}\nreference matmul: {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for name in args.models.split(","):
        for event_shape in event_shapes(name, settings["dims"]):
            for train_batch in settings["train_batches"]:
                models = {}
                for library in libraries:
                    model = peers.build(library, name, jax.random.key(1), event_shape, **MODELS[name])
                    if model is None:
                        print(f"note: {library} cannot express {name}; skipped")
                    else:
                        models[library] = model
                measured = measure_models(models, event_shape, train_batch=train_batch,
                                          eval_batch=settings["eval_batch"], repeats=settings["repeats"],
                                          train_steps=settings["train_steps"],
                                          compile_repeats=settings["compile_repeats"])
                for library, measures in measured.items():
                    row = {"model": name, "event_shape": event_shape, "train_batch": train_batch,
                           "eval_batch": settings["eval_batch"], "library": library, **measures}
                    row["flops_fraction"] = row["train_gflops"] / peak
                    rows.append(row)
                    print(row, flush=True)
    _add_ratios(rows)
    columns = ["model", "event_shape", "train_batch", "eval_batch", "library", "compile_s", "train_step_ms",
               "log_prob_per_s", "sample_per_s", "flops_fraction", "speedup_compile", "speedup_train",
               "speedup_log_prob", "speedup_sample"]
    print(f"\nsuite {args.suite}; speedup = jaxflow's advantage over that peer (>1: jaxflow faster)")
    print(markdown_table(rows, columns))
    write_json(args.out, {"benchmark": "run", "suite": args.suite, "settings": settings, "environment": environment(),
                          "matmul_gflops": peak, "rows": rows})


def _add_ratios(rows):
    """On every peer row, jaxflow's speed-up over it, measured in this same run."""
    ours = {(r["model"], r["event_shape"], r["train_batch"]): r for r in rows if r["library"] == "jaxflow"}
    for row in rows:
        mine = ours.get((row["model"], row["event_shape"], row["train_batch"]))
        if mine is None or row is mine:
            continue
        row["speedup_compile"] = row["compile_s"] / mine["compile_s"]
        row["speedup_train"] = row["train_step_ms"] / mine["train_step_ms"]
        row["speedup_log_prob"] = mine["log_prob_per_s"] / row["log_prob_per_s"]
        row["speedup_sample"] = mine["sample_per_s"] / row["sample_per_s"]


if __name__ == "__main__":
    main()
