"""The benchmark suite: jaxflow against flowjax and distrax on identical models.

For each ready-made flow (realnvp: dim 16, 8 layers; maf: dim 16, 5 layers; nsf: dim 16, 8 layers,
8 bins; all MLP/MADE 2x128; and, jaxflow only, nice, iaf, autoregressive nsf, Flow++, residual,
planar, radial and Sylvester flows) and each library that can express it: compile time of the training step,
training-step time (Adam, batch 512), log_prob and sample throughput (batch 8192), and the
training step's achieved FLOP/s (XLA cost analysis) as a fraction of a dense matmul timed in the
same run. Medians over repeats, `block_until_ready` on every result. Runs unchanged on CPU/GPU/TPU.

    python -m benchmarks.run --suite quick --out results/quick.json
    python -m benchmarks.run --suite full --compare flowjax,distrax --out results/full.json
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks import peers
from benchmarks._common import environment, markdown_table, median_seconds, write_json
from benchmarks.compile_depth import available

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
}
SUITES = {
    "quick": dict(repeats=5, train_steps=20, dims=[16], train_batches=[512]),
    "full": dict(repeats=9, train_steps=50, dims=[4, 16, 64], train_batches=[128, 512, 2048]),
}


def _block(tree):
    return jax.block_until_ready(tree)


def train_step_fn(model, optimizer):
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(lambda p: -jnp.mean(model.log_prob(p, x)))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def measure_model(model, dim, *, train_batch, eval_batch, repeats, train_steps) -> dict:
    """Compile time, step time, throughputs and FLOP/s of one model."""
    key = jax.random.key(0)
    x_train = jax.random.normal(key, (train_batch, dim))
    x_eval = jax.random.normal(key, (eval_batch, dim))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(model.params)
    step = train_step_fn(model, optimizer)

    start = time.perf_counter()
    compiled = jax.jit(step).lower(model.params, opt_state, x_train).compile()
    compile_s = time.perf_counter() - start
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))

    def run_steps():
        params, state = model.params, opt_state
        for _ in range(train_steps):
            params, state, loss = compiled(params, state, x_train)
        _block(loss)

    run_steps()
    step_s = median_seconds(run_steps, repeats) / train_steps

    log_prob = jax.jit(model.log_prob)
    _block(log_prob(model.params, x_eval))
    log_prob_s = median_seconds(lambda: _block(log_prob(model.params, x_eval)), repeats)
    sample = jax.jit(model.sample, static_argnums=2)
    _block(sample(model.params, key, eval_batch))
    sample_s = median_seconds(lambda: _block(sample(model.params, key, eval_batch)), repeats)
    return {
        "compile_s": compile_s,
        "train_step_ms": 1e3 * step_s,
        "log_prob_per_s": eval_batch / log_prob_s,
        "sample_per_s": eval_batch / sample_s,
        "train_gflops": flops / step_s / 1e9,
    }


def matmul_gflops(repeats: int, size: int = 1024) -> float:
    """Achieved GFLOP/s of a float32 dense matmul: the reference for FLOP/s fractions."""
    a = jax.random.normal(jax.random.key(0), (size, size))
    matmul = jax.jit(lambda a: a @ a)
    _block(matmul(a))
    return 2 * size**3 / median_seconds(lambda: _block(matmul(a)), repeats) / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--compare", default="flowjax,distrax", help="comma-separated peers ('' for none)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--eval-batch", type=int, default=8192)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    libraries = available(["jaxflow", *[p for p in args.compare.split(",") if p]])

    peak = matmul_gflops(suite["repeats"])
    print(f"{environment()}\nreference matmul: {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for name in args.models.split(","):
        for dim in suite["dims"]:
            for train_batch in suite["train_batches"]:
                for library in libraries:
                    model = peers.build(library, name, jax.random.key(1), dim, **MODELS[name])
                    if model is None:
                        print(f"note: {library} cannot express {name}; skipped")
                        continue
                    row = {"model": name, "dim": dim, "train_batch": train_batch, "library": library}
                    row.update(measure_model(model, dim, train_batch=train_batch, eval_batch=args.eval_batch,
                                             repeats=suite["repeats"], train_steps=suite["train_steps"]))
                    row["flops_fraction"] = row["train_gflops"] / peak
                    rows.append(row)
                    print(row, flush=True)
    _add_ratios(rows)
    columns = ["model", "dim", "train_batch", "library", "compile_s", "train_step_ms", "log_prob_per_s", "sample_per_s",
               "flops_fraction", "speedup_train", "speedup_log_prob", "speedup_sample"]
    print(f"\nsuite {args.suite}; speedup = jaxflow's advantage over that peer (>1: jaxflow faster)")
    print(markdown_table(rows, columns))
    write_json(args.out, {"benchmark": "run", "suite": args.suite, "environment": environment(), "matmul_gflops": peak, "rows": rows})


def _add_ratios(rows):
    """On every peer row, jaxflow's speed-up over it, measured in this same run."""
    ours = {(r["model"], r["dim"], r["train_batch"]): r for r in rows if r["library"] == "jaxflow"}
    for row in rows:
        mine = ours.get((row["model"], row["dim"], row["train_batch"]))
        if mine is None or row is mine:
            continue
        row["speedup_train"] = row["train_step_ms"] / mine["train_step_ms"]
        row["speedup_log_prob"] = mine["log_prob_per_s"] / row["log_prob_per_s"]
        row["speedup_sample"] = mine["sample_per_s"] / row["sample_per_s"]


if __name__ == "__main__":
    main()
