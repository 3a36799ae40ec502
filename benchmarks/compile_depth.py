"""Compile time versus depth: RealNVP with n = 4..64 affine-coupling layers (MLP 2x128, dim 16).

The timed program is one training-step gradient, `jit(value_and_grad(loss)).lower(...).compile()`
from a cold cache (trace + lower + compile), the cost a user pays before the first step.

    python -m benchmarks.compile_depth --out results/compile_depth.json
"""

from __future__ import annotations

import argparse
import importlib.util

import jax

from benchmarks import peers
from benchmarks._common import compile_seconds, environment, markdown_table, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--libraries", nargs="+", default=["jaxflow", "distrax", "flowjax"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    libraries = [lib for lib in args.libraries if lib == "jaxflow" or importlib.util.find_spec(lib)]
    for missing in set(args.libraries) - set(libraries):
        print(f"note: {missing} is not installed; skipped")
    x = jax.random.normal(jax.random.key(0), (args.batch, args.dim))
    rows = []
    for depth in args.depths:
        row = {"layers": depth}
        for library in libraries:
            loss, params = peers.REALNVP[library](jax.random.key(depth), args.dim, depth)
            row[library] = compile_seconds(jax.value_and_grad(loss), params, x, repeats=args.repeats)
        for library in libraries[1:]:
            row[f"{library}/jaxflow"] = row[library] / row["jaxflow"]
        rows.append(row)
        print(rows[-1], flush=True)
    first, last = rows[0]["jaxflow"], rows[-1]["jaxflow"]
    summary = {"jaxflow_growth": last / first, "depths": [args.depths[0], args.depths[-1]]}
    columns = ["layers", *libraries, *[f"{lib}/jaxflow" for lib in libraries[1:]]]
    print(f"\nCompile time (s), value_and_grad of the NLL, dim {args.dim}, batch {args.batch}, median of {args.repeats}")
    print(markdown_table(rows, columns))
    print(f"jaxflow compile time at n={args.depths[-1]} / n={args.depths[0]}: {summary['jaxflow_growth']:.2f}x")
    write_json(args.out, {"benchmark": "compile_depth", "environment": environment(), "config": vars(args), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
