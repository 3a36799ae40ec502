"""The gradient of a dense layer's weights in both storage layouts: (in, out) and (out, in).

Reverse mode computes a dense layer's weight gradient as a contraction over the batch,
h^T g, which XLA on CPU hands to Eigen rather than to its faster dot library; how long it takes
depends on the result's shape. `conditioners.Dense` stores a narrowing layer's weights as
(out, in) on that evidence; this script measures it on whatever `jax.devices()` offers.
Each row times `jit(grad)` of <dense(h), g> with respect to the weights, median of repeats.

    python -m benchmarks.dense_layout --out results/dense_layout.json
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks._common import environment, markdown_table, median_seconds, write_json
from jaxflow.conditioners.dense import product, stores_transposed

SHAPES = [(8, 128), (128, 8), (128, 16), (16, 128), (128, 32), (128, 128), (128, 184), (184, 128)]
CALLS_PER_TIMING = 50


def weight_gradient(transposed: bool):
    """`jit(grad)` of <h @ kernel, g> in the weights, stored as kernel (in, out) or its transpose (out, in),
    computed as `conditioners.Dense` computes its product."""
    return jax.jit(jax.grad(lambda w, h, g: jnp.sum(product(h, w, transposed) * g)))


def weight_gradient_seconds(h, g, transposed: bool, repeats: int) -> float:
    """Seconds per call of `weight_gradient(transposed)` on the batch h (n, in), g (n, out)."""
    gradient = weight_gradient(transposed)
    shape = (h.shape[1], g.shape[1])
    weights = jnp.zeros(shape[::-1] if transposed else shape, h.dtype)
    jax.block_until_ready(gradient(weights, h, g))

    def calls():
        for _ in range(CALLS_PER_TIMING):
            result = gradient(weights, h, g)
        jax.block_until_ready(result)

    return median_seconds(calls, repeats) / CALLS_PER_TIMING


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--shapes", default=",".join(f"{i}x{o}" for i, o in SHAPES), help="in x out pairs")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    rows = []
    for batch in args.batches:
        for in_features, out_features in [map(int, pair.split("x")) for pair in args.shapes.split(",")]:
            keys = jax.random.split(jax.random.key(batch), 2)
            h = jax.random.normal(keys[0], (batch, in_features))
            g = jax.random.normal(keys[1], (batch, out_features))
            in_out = weight_gradient_seconds(h, g, False, args.repeats)
            out_in = weight_gradient_seconds(h, g, True, args.repeats)
            rows.append({
                "batch": batch, "in": in_features, "out": out_features, "(in, out) us": 1e6 * in_out,
                "(out, in) us": 1e6 * out_in, "(in, out) / (out, in)": in_out / out_in,
                "Dense stores": "(out, in)" if stores_transposed(in_features, out_features) else "(in, out)",
            })
            print(rows[-1], flush=True)
    columns = ["batch", "in", "out", "(in, out) us", "(out, in) us", "(in, out) / (out, in)", "Dense stores"]
    print(f"\nWeight-gradient time per call, median of {args.repeats} timings of {CALLS_PER_TIMING} calls")
    print(markdown_table(rows, columns))
    config = {"batches": args.batches, "shapes": args.shapes, "repeats": args.repeats,
              "calls_per_timing": CALLS_PER_TIMING}
    write_json(args.out, {"benchmark": "dense_layout", "environment": environment(), "config": config, "rows": rows})


if __name__ == "__main__":
    main()
