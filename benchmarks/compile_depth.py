"""Compile time versus depth: RealNVP with n = 4..64 affine-coupling layers (MLP 2x128, dim 16).

The timed program is one training-step gradient, `jit(value_and_grad(nll)).lower(...).compile()`
from a cold cache (trace + lower + compile), the cost a user pays before the first step.

    python -m benchmarks.compile_depth --out results/compile_depth.json
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import jax.numpy as jnp

from benchmarks import peers
from benchmarks._common import check_names, compile_seconds, environment, markdown_table, positive_int, write_json


def available(libraries):
    """The libraries that can run here: all but the peer packages that are not installed."""
    present = [lib for lib in libraries if lib not in peers.PEER_PACKAGES or importlib.util.find_spec(lib)]
    for missing in sorted(set(libraries) - set(present)):
        print(f"note: {missing} is not installed; skipped")
    return present


def nll_gradient(model):
    return jax.value_and_grad(lambda params, x: -jnp.mean(model.log_prob(params, x)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=positive_int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--dim", type=positive_int, default=16)
    parser.add_argument("--batch", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--libraries", nargs="+", default=["jaxflow", "distrax", "flowjax"],
                        help="jaxflow, the reference of every ratio, is always measured (first)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    check_names(parser, "libraries", ",".join(args.libraries), peers.LIBRARIES)

    libraries = ["jaxflow", *available([lib for lib in args.libraries if lib != "jaxflow"])]
    x = jax.random.normal(jax.random.key(0), (args.batch, args.dim))
    rows = []
    for depth in args.depths:
        row = {"layers": depth}
        for library in libraries:
            model = peers.build(library, "realnvp", jax.random.key(depth), args.dim, depth, (128, 128))
            row[library] = compile_seconds(nll_gradient(model), model.params, x, repeats=args.repeats)
        for library in libraries[1:]:
            row[f"{library}/jaxflow"] = row[library] / row["jaxflow"]
        rows.append(row)
        print(row, flush=True)
    growth = rows[-1]["jaxflow"] / rows[0]["jaxflow"]
    columns = ["layers", *libraries, *[f"{lib}/jaxflow" for lib in libraries[1:]]]
    print(f"\nCompile time (s) of value_and_grad(NLL), RealNVP dim {args.dim}, batch {args.batch}, "
          f"median of {args.repeats}")
    print(markdown_table(rows, columns))
    print(f"jaxflow compile time at n={args.depths[-1]} / n={args.depths[0]}: {growth:.2f}x")
    write_json(args.out, {
        "benchmark": "compile_depth", "environment": environment(), "config": vars(args), "rows": rows,
        "jaxflow_growth": growth,
    })


if __name__ == "__main__":
    main()
