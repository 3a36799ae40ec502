"""A jaxflow flow as a numpyro autoguide: eight schools (non-centred), SVI against NUTS and AutoIAFNormal.

    mu ~ N(0, 5^2),   tau ~ HalfCauchy(5),   theta_tilde_j ~ N(0, 1),
    theta_j = mu + tau theta_tilde_j,   y_j ~ N(theta_j, sigma_j^2),   j = 1..8

`AutoFlowGuide` fits a RealNVP on the model's 10 unconstrained latents (mu,
log tau, theta_tilde) by SVI; numpyro's `AutoIAFNormal` is fitted the same way,
and NUTS gives a sampling baseline. Posterior means and sds of every site are
compared with the posteriordb reference draws (shared/data/posteriors).

    python examples/numpyro_guide.py

References: Rubin (1981), Estimation in parallel randomized experiments, JEBS 6;
Dinh et al. (2016) RealNVP, https://arxiv.org/abs/1605.08803; Kingma et al.
(2016) IAF, https://arxiv.org/abs/1606.04934.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoIAFNormal

from jaxflow import flows
from jaxflow.interop.numpyro import AutoFlowGuide

POSTERIORS = Path(__file__).resolve().parents[1].parent / "shared/data/posteriors"
SITES = ["mu", "tau"] + [f"theta[{j}]" for j in range(1, 9)]
SIGMA = np.array([15, 10, 16, 11, 9, 11, 10, 18], np.float32)  # Rubin (1981); posteriordb's eight_schools data
Y = np.array([28, 8, -3, 7, -1, 1, 18, 12], np.float32)


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", len(sigma)):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def as_columns(draws: dict) -> np.ndarray:
    """Draws of (mu, tau, theta[1..8]) as one (num_draws, 10) array."""
    return np.column_stack([draws["mu"], draws["tau"], draws["theta"]])


def reference_draws() -> np.ndarray | None:
    """posteriordb's draws reordered to (mu, tau, theta[1..8]), or None if shared/ is absent."""
    path = POSTERIORS / "reference_draws.npz"
    if not path.exists():
        return None
    draws = np.load(path)["eight_schools_centered"]  # theta[1..8], mu, log tau
    return np.column_stack([draws[:, 8], np.exp(draws[:, 9]), draws[:, :8]])


def fit_svi(guide, data, *, steps: int, key) -> tuple[np.ndarray, float]:
    """Trains `guide` by SVI (8-particle ELBO, Adam with cosine decay); returns 20k draws and the seconds taken."""
    start = time.perf_counter()
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.02))
    svi = SVI(eight_schools, guide, optimizer, Trace_ELBO(num_particles=8))
    fit_key, draw_key = jax.random.split(key)
    params = svi.run(fit_key, steps, *data, progress_bar=False).params
    draws = guide.sample_posterior(draw_key, params, sample_shape=(20_000,))
    return as_columns(draws), time.perf_counter() - start


def run_nuts(data, *, key) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    mcmc = MCMC(
        NUTS(eight_schools), num_warmup=1000, num_samples=2000, num_chains=2, chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(key, *data)
    return as_columns(mcmc.get_samples()), time.perf_counter() - start


def moment_table(reference: np.ndarray, fits: dict[str, np.ndarray]) -> str:
    """Mean and sd of every site per method, then each method's largest errors in reference sds."""
    columns = {"reference": reference, **fits}
    rows = [f"{'':<16}" + "".join(f"{name + ' mean':>18}{'sd':>7}" for name in columns)]
    for i, site in enumerate(SITES):
        rows.append(f"{site:<16}" + "".join(f"{d[:, i].mean():18.2f}{d[:, i].std():7.2f}" for d in columns.values()))
    mean_err = [np.max(np.abs(d.mean(0) - reference.mean(0)) / reference.std(0)) for d in fits.values()]
    sd_err = [np.max(np.abs(d.std(0) / reference.std(0) - 1)) for d in fits.values()]
    rows.append(f"{'max |mean err|/sd':<16}{'':25}" + "".join(f"{e:18.3f}{'':7}" for e in mean_err))
    rows.append(f"{'max |sd ratio-1|':<16}{'':25}" + "".join(f"{'':18}{e:7.3f}" for e in sd_err))
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = (SIGMA, Y)
    flow_key, iaf_key, nuts_key = jax.random.split(jax.random.key(args.seed), 3)

    flow_guide = AutoFlowGuide(eight_schools, lambda dim: flows.realnvp(dim, layers=6, hidden=(32, 32)))
    columns, seconds = {}, {}  # method -> (num_draws, 10) draws, method -> seconds
    columns["jaxflow"], seconds["jaxflow"] = fit_svi(flow_guide, data, steps=args.steps, key=flow_key)
    iaf_guide = AutoIAFNormal(eight_schools, hidden_dims=[32, 32])
    columns["AutoIAF"], seconds["AutoIAF"] = fit_svi(iaf_guide, data, steps=args.steps, key=iaf_key)
    columns["NUTS"], seconds["NUTS"] = run_nuts(data, key=nuts_key)

    reference = reference_draws()
    if reference is None:
        print("posteriordb reference draws not found: NUTS is the reference")
        reference = columns.pop("NUTS")
    print(moment_table(reference, columns))
    print("seconds (compile included): " + ", ".join(f"{name} {s:.1f}" for name, s in seconds.items()))


if __name__ == "__main__":
    main()
