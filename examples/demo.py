"""The jaxflow demo: what `make demo` runs.

Part 1, the core: build a RealNVP flow, sample it, evaluate densities, check the round
trip, and draw the density and samples to a PNG.

    python examples/demo.py --out out/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import jaxflow as jf  # noqa: E402
from jaxflow import bijectors as jb  # noqa: E402
from jaxflow.testing import perturbed_params  # noqa: E402


def core_showcase(out: Path) -> dict:
    """A random RealNVP: sampling, densities, round trip, a PNG of density and samples."""
    layer = jf.chain(jb.affine_coupling(2, hidden=(32, 32)), jb.reverse())
    flow = jf.Flow(jf.standard_normal(2), jf.stack(layer, 6))
    params = perturbed_params(flow, jax.random.key(0), 0.15)  # a random, non-identity flow

    sample_and_log_prob = jax.jit(lambda p, k: flow.sample_and_log_prob(p, k, (5000,)))
    log_prob = jax.jit(flow.log_prob)
    x, log_q = sample_and_log_prob(params, jax.random.key(1))
    round_trip_error = float(jnp.max(jnp.abs(log_prob(params, x) - log_q)))
    z, _ = jax.vmap(flow.bijector.inverse, in_axes=(None, 0))(params["bijector"], x)
    x_back, _ = jax.vmap(flow.bijector.forward, in_axes=(None, 0))(params["bijector"], z)
    inversion_error = float(jnp.max(jnp.abs(x_back - x)))

    lo, hi = jnp.percentile(x, 0.5, axis=0) - 0.5, jnp.percentile(x, 99.5, axis=0) + 0.5
    xs, ys = jnp.linspace(lo[0], hi[0], 200), jnp.linspace(lo[1], hi[1], 200)
    grid = jnp.stack(jnp.meshgrid(xs, ys), -1)
    density = jnp.exp(log_prob(params, grid))

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].pcolormesh(xs, ys, density, shading="auto")
    axes[0].set_title("density q(x)")
    axes[1].scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
    axes[1].set_title("5000 samples")
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    fig.suptitle("A random 6-layer RealNVP")
    fig.tight_layout()
    path = out / "core_realnvp.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {
        "log_prob(sample) - sample log q (max abs)": round_trip_error,
        "forward(inverse(x)) - x (max abs)": inversion_error,
        "density plot": str(path),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="The jaxflow demo.")
    parser.add_argument("--out", default="out/demo", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"jaxflow {jf.__version__} on {jax.devices()[0].device_kind}")
    for key, value in core_showcase(args.out).items():
        print(f"  {key}: {value:.2e}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"done in {time.perf_counter() - start:.1f} s; figures in {args.out}/")


if __name__ == "__main__":
    main()
