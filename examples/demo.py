"""The jaxflow demo: what `make demo` runs (about 3 minutes on 2 CPU cores).

1. The core: a random RealNVP flow, sampled and evaluated, its round trip checked.
2. Forward KL: a neural spline flow fitted to two moons.
3. Forward KL: a neural spline flow fitted to sklearn's 8x8 digits (dequantised), in bits/dim.
4. Reverse KL: a variational posterior for Bayesian logistic regression on the breast-cancer
   data, compared with NUTS: the gold-standard draws in shared/data/posteriors/ beside the
   repository when present, otherwise a NUTS run (numpyro) made here, about 30 s.

Every part writes a PNG to --out and adds lines to the printed summary.

    python examples/demo.py --out out/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow import datasets, flows, targets
from jaxflow.testing import perturbed_params
from jaxflow.train import diagnostics, forward_kl, reverse_kl


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


def _density_panel(ax, flow, params, lo, hi, title):
    xs, ys = np.linspace(lo, hi, 200), np.linspace(lo, hi, 200)
    grid = jnp.stack(jnp.meshgrid(xs, ys), -1)
    ax.pcolormesh(xs, ys, jnp.exp(jax.jit(flow.log_prob)(params, grid)), shading="auto")
    ax.set_title(title)


def two_moons(out: Path, num_steps: int) -> dict:
    """An 8-bin spline coupling flow fitted to two moons by maximum likelihood."""
    data = datasets.two_moons(6000)
    train, test = data[:5000], data[5000:]
    flow = flows.nsf_coupling(2, layers=4, hidden=(64, 64), bins=8, bound=4.0)
    params, _ = forward_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), train,
        num_steps=num_steps, batch_size=256, optimizer=optax.adam(3e-3),
    )
    test_log_likelihood = float(jnp.mean(flow.log_prob(params, test)))
    samples = flow.sample(params, jax.random.key(2), (3000,))

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].scatter(test[:, 0], test[:, 1], s=2, alpha=0.4)
    axes[0].set_title("test data")
    _density_panel(axes[1], flow, params, -3, 3, f"NSF density (test log-lik {test_log_likelihood:.3f})")
    axes[2].scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, color="C1")
    axes[2].set_title("NSF samples")
    for ax in axes:
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
    fig.tight_layout()
    path = out / "two_moons_nsf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"two moons: test log-likelihood (nats)": test_log_likelihood, "two moons plot": str(path)}


def digits(out: Path, num_steps: int) -> dict:
    """A spline coupling flow on dequantised, logit-transformed 8x8 digits; test bits/dim."""
    train_int, test_int, _, _ = datasets.digits()
    train, _ = datasets.dequantize_logit(train_int, seed=0)
    test, test_log_det = datasets.dequantize_logit(test_int, seed=1)
    flow = flows.nsf_coupling(64, layers=4, hidden=(128, 128), bins=8, bound=4.0)
    params, _ = forward_kl.fit(
        jax.random.key(3), flow, flow.init(jax.random.key(4)), train,
        num_steps=num_steps, batch_size=256, optimizer=optax.adam(1e-3), patience=3,
    )
    log_likelihood = datasets.integer_log_likelihood(np.asarray(flow.log_prob(params, test)), test_log_det, 64)
    bits_per_dim = float(-log_likelihood.mean() / (64 * np.log(2)))
    samples = datasets.undo_logit(flow.sample(params, jax.random.key(5), (32,)))

    fig, axes = plt.subplots(4, 16, figsize=(12, 3.3))
    images = np.concatenate([test_int[:32], samples])
    for ax, image in zip(axes.ravel(), images):
        ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
        ax.axis("off")
    fig.suptitle(f"digits: test images (top two rows) and NSF samples (bottom two); {bits_per_dim:.2f} bits/dim")
    path = out / "digits_nsf.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"digits: test bits/dim (dequantised)": bits_per_dim, "digits plot": str(path)}


def reference_posterior(target, *, key, path=None, num_warmup=1000, num_samples=4000) -> tuple[np.ndarray, str]:
    """Posterior draws (num_draws, dim) to judge a fit by, and where they came from.

    The gold-standard draws when the archive at `path` (default: the shared data) exists;
    otherwise NUTS with numpyro on `target.log_density`, started at the origin.
    """
    try:
        return targets.reference_draws(target.reference_key, path), "reference draws"
    except FileNotFoundError:
        from numpyro.infer import MCMC, NUTS

        kernel = NUTS(potential_fn=lambda z: -target.log_density(z))
        mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, progress_bar=False)
        mcmc.run(key, init_params=jnp.zeros(target.dim))
        return np.asarray(mcmc.get_samples(), np.float64), f"NUTS run here ({num_samples} draws)"


def logistic_regression(out: Path, num_steps: int, laplace_start: bool = True) -> dict:
    """A variational posterior for Bayesian logistic regression (31 parameters) against NUTS draws."""
    target = targets.logistic_regression_breast_cancer()
    body = flows.realnvp(target.dim, layers=4, hidden=(64, 64), permute="random").bijector
    flow = jf.Flow(jf.standard_normal(target.dim), jf.chain(body, jb.affine(target.dim)))
    params = flow.init(jax.random.key(7))  # the final affine layer starts as the identity
    if laplace_start:  # at the Laplace approximation instead: the fit then only has to bend it
        mode, sd = targets.laplace_approximation(target)
        params = {**params, "bijector": (params["bijector"][0], jb.affine_params(mode, sd))}
    params, _ = reverse_kl.fit(
        jax.random.key(6), flow, params, target.log_density,
        num_samples=128, num_steps=num_steps, stick_the_landing=True,
        optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, num_steps)),
    )
    report = diagnostics.importance_diagnostics(jax.random.key(8), flow, params, target.log_density, 4096)
    draws = np.asarray(flow.sample(params, jax.random.key(9), (20000,)))
    reference, source = reference_posterior(target, key=jax.random.key(10))
    mean_error = (draws.mean(0) - reference.mean(0)) / reference.std(0)
    sd_ratio = draws.std(0) / reference.std(0)

    shown = [0, 1, 2, 8, 21, 28]
    fig, axes = plt.subplots(1, len(shown), figsize=(15, 2.8))
    for ax, i in zip(axes, shown):
        bins = np.linspace(*np.percentile(reference[:, i], [0.1, 99.9]), 50)
        ax.hist(reference[:, i], bins, density=True, alpha=0.5, label="NUTS")
        ax.hist(draws[:, i], bins, density=True, histtype="step", lw=2, label="jaxflow VI")
        ax.set_title(target.labels[i])
        ax.set_yticks([])
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Bayesian logistic regression, breast cancer: k-hat {float(report.k_hat):.2f}")
    fig.tight_layout()
    path = out / "logistic_regression_vi.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {
        "logistic regression: max |mean error| / sd": float(np.abs(mean_error).max()),
        "logistic regression: max |sd ratio - 1|": float(np.abs(sd_ratio - 1).max()),
        "logistic regression: Pareto k-hat": float(report.k_hat),
        "logistic regression: importance ESS (fraction)": float(report.ess),
        "logistic regression: compared with": source,
        "logistic regression plot": str(path),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="The jaxflow demo.")
    parser.add_argument("--out", default="out/demo", type=Path)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per forward-KL fit")
    parser.add_argument("--vi-steps", type=int, default=2000, help="training steps of the reverse-KL fit")
    parser.add_argument("--no-laplace", action="store_true",
                        help="start the reverse-KL fit at N(0, I) rather than at the Laplace approximation")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"jaxflow {jf.__version__} on {jax.devices()[0].device_kind}")
    parts = [
        lambda: core_showcase(args.out),
        lambda: two_moons(args.out, args.steps),
        lambda: digits(args.out, args.steps),
        lambda: logistic_regression(args.out, args.vi_steps, laplace_start=not args.no_laplace),
    ]
    summary = {}
    for part in parts:
        summary.update(part())
    print("\nsummary")
    for key, value in summary.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"done in {time.perf_counter() - start:.1f} s; figures in {args.out}/")


if __name__ == "__main__":
    main()
