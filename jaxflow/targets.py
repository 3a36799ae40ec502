"""Target densities for variational inference, with gold-standard draws to check a fit against.

Each target is a JAX function of one flat vector (all parameters unconstrained:
positive ones enter as their logarithm, with the log-Jacobian included), so it can
be handed straight to `jaxflow.train.reverse_kl.fit`:

    target = targets.eight_schools_centered()
    params, _ = reverse_kl.fit(key, flow, params, target.log_density)
    draws = targets.reference_draws(target.reference_key)     # (10000, 10), same coordinates

Every log density is the exact log joint density, normalising constants included:
`neal_funnel` and `banana` are normalised (log Z = 0), and for the posteriors
log Z is the log marginal likelihood of the data.

The reference draws and the posteriordb data live outside the package, in
`shared/data/posteriors/` next to the repository (its README gives their sources).

References: Neal (2003) Slice sampling, https://arxiv.org/abs/physics/0009028;
Haario, Saksman & Tamminen (1999) Adaptive proposal distribution for random walk
Metropolis algorithm, Computational Statistics 14; Magnusson et al. (2022)
posteriordb, https://arxiv.org/abs/2407.04967; Rubin (1981) Estimation in parallel
randomized experiments, Journal of Educational Statistics 6(4).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy import stats

from jaxflow.bijectors._checks import check_event

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "posteriors"
REFERENCE_DRAWS = DATA_DIR / "reference_draws.npz"

_LOG_2 = math.log(2.0)


class Target(NamedTuple):
    """An unnormalised density on R^dim.

    Attributes:
      name: what it is, e.g. "neal_funnel".
      dim: size of the flat parameter vector.
      log_density: `x (dim,) -> scalar`, the log density at one point.
      reference_key: key of its draws in `reference_draws`, or None if there are none.
      labels: one name per coordinate, e.g. ("theta[1]", ..., "log tau").
    """

    name: str
    dim: int
    log_density: Callable[[jax.Array], jax.Array]
    reference_key: str | None
    labels: tuple[str, ...] = ()


def _check_point(name, point, shape):
    advice = "A target's log density takes one point; batch with jax.vmap."
    return check_event(name, point, shape, what="point", advice=advice)


def neal_funnel(dim: int = 10) -> Target:
    """Neal's funnel: v ~ N(0, 3^2), x_i | v ~ N(0, e^v) for i = 1..dim-1; coordinates (v, x_1, ...)."""
    if int(dim) != dim or dim < 2:
        raise ValueError(f"neal_funnel needs a whole dim >= 2 (v and at least one x), got {dim}.")
    dim = int(dim)

    def log_density(point):
        point = _check_point("neal_funnel", point, (dim,))
        v, x = point[0], point[1:]
        return stats.norm.logpdf(v, 0.0, 3.0) + jnp.sum(stats.norm.logpdf(x, 0.0, jnp.exp(v / 2)))

    labels = ("v", *(f"x[{i}]" for i in range(1, dim)))
    return Target("neal_funnel", dim, log_density, "neal_funnel" if dim == 10 else None, labels)


def banana(b: float = 0.1) -> Target:
    """The twisted Gaussian of Haario et al. (1999): x1 ~ N(0, 10^2), x2 | x1 ~ N(b (x1^2 - 100), 1)."""
    b = float(b)

    def log_density(x):
        x = _check_point("banana", x, (2,))
        return stats.norm.logpdf(x[0], 0.0, 10.0) + stats.norm.logpdf(x[1], b * (x[0] ** 2 - 100.0), 1.0)

    return Target("banana", 2, log_density, "banana" if b == 0.1 else None, ("x1", "x2"))


def logistic_regression_breast_cancer() -> Target:
    """Bayesian logistic regression on scikit-learn's breast-cancer data (569 rows, 30 features).

    Coordinates (intercept, w_1..w_30), all with N(0, 1) priors; the features are
    standardised with the full-data mean and (population) standard deviation, and
    y = 1 for a benign tumour, as `sklearn.datasets.load_breast_cancer` codes it.
    """
    features, labels = _breast_cancer()
    dim = features.shape[1] + 1

    def log_density(coefficients):
        coefficients = _check_point("logistic_regression_breast_cancer", coefficients, (dim,))
        logits = coefficients[0] + features @ coefficients[1:]
        log_likelihood = jnp.sum(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits))
        return jnp.sum(stats.norm.logpdf(coefficients)) + log_likelihood

    names = ("intercept", *(f"w[{i}]" for i in range(1, dim)))
    return Target("logreg_breast_cancer", dim, log_density, "logreg_breast_cancer", names)


def eight_schools_centered() -> Target:
    """Eight schools, centred (posteriordb `eight_schools_centered`); coordinates (theta[1..8], mu, log tau).

    mu ~ N(0, 5^2), tau ~ half-Cauchy(0, 5), theta_j ~ N(mu, tau^2),
    y_j ~ N(theta_j, sigma_j^2), with log|d tau / d log tau| = log tau added.
    A funnel in (theta, log tau): hard for most samplers and for VI.
    """
    data = _posteriordb_data("posteriordb_eight_schools.json")
    y, sigma = np.asarray(data["y"], float), np.asarray(data["sigma"], float)
    num_schools = int(data["J"])
    dim = num_schools + 2

    def log_density(x):
        x = _check_point("eight_schools_centered", x, (dim,))
        theta, mu, log_tau = x[:num_schools], x[num_schools], x[num_schools + 1]
        tau = jnp.exp(log_tau)
        log_prior = stats.norm.logpdf(mu, 0.0, 5.0) + _half_cauchy_logpdf(tau, 5.0) + log_tau
        log_prior += jnp.sum(stats.norm.logpdf(theta, mu, tau))
        return log_prior + jnp.sum(stats.norm.logpdf(y, theta, sigma))

    labels = (*(f"theta[{j}]" for j in range(1, num_schools + 1)), "mu", "log tau")
    return Target("eight_schools_centered", dim, log_density, "eight_schools_centered", labels)


def ark() -> Target:
    """AR(K) regression (posteriordb `arK`, K = 5, T = 200); coordinates (alpha, beta[1..K], log sigma).

    y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma^2) for t > K, alpha, beta_k ~ N(0, 10^2),
    sigma ~ half-Cauchy(0, 2.5), with log|d sigma / d log sigma| = log sigma added.
    """
    data = _posteriordb_data("posteriordb_arK.json")
    series, order = np.asarray(data["y"], float), int(data["K"])
    lags = np.stack([series[order - k : len(series) - k] for k in range(1, order + 1)], axis=1)  # (T - K, K)
    response = series[order:]
    dim = order + 2

    def log_density(x):
        x = _check_point("ark", x, (dim,))
        alpha, beta, log_sigma = x[0], x[1 : order + 1], x[order + 1]
        sigma = jnp.exp(log_sigma)
        log_prior = jnp.sum(stats.norm.logpdf(x[: order + 1], 0.0, 10.0)) + _half_cauchy_logpdf(sigma, 2.5) + log_sigma
        return log_prior + jnp.sum(stats.norm.logpdf(response, alpha + lags @ beta, sigma))

    labels = ("alpha", *(f"beta[{k}]" for k in range(1, order + 1)), "log sigma")
    return Target("ark", dim, log_density, "arK", labels)


def laplace_approximation(target: Target, *, num_steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The Laplace approximation's mode and marginal sds: a start for variational fits.

    The mode comes from L-BFGS started at 0, the sds from the diagonal of the inverse
    Hessian of -log_density there. Set a flow's final affine layer to `mode + sd * z`
    and reverse KL starts from the right location and scale (the breast-cancer logistic
    regression of the demo: mean error 0.32 sd without it, 0.03 with it, same steps;
    `examples/demo.py --no-laplace` runs it without).

    Returns:
      `(mode, sd)`, each (dim,), float64 numpy arrays.
    Raises:
      ValueError: no mode with a positive-definite Hessian was found (an improper density,
        or an L-BFGS run from 0 that stopped at a saddle or needs more steps).
    """
    negative_log_density = lambda x: -target.log_density(x)  # noqa: E731
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(negative_log_density)

    def step(carry, _):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = solver.update(grad, state, x, value=value, grad=grad, value_fn=negative_log_density)
        return (optax.apply_updates(x, updates), state), None

    @jax.jit
    def mode_and_hessian(x):
        (mode, _), _ = jax.lax.scan(step, (x, solver.init(x)), length=num_steps)
        return mode, jax.hessian(negative_log_density)(mode)

    mode, hessian = (np.asarray(a, np.float64) for a in mode_and_hessian(jnp.zeros(target.dim)))
    finite = np.all(np.isfinite(mode)) and np.all(np.isfinite(hessian))
    curvatures = np.linalg.eigvalsh(hessian) if finite else np.full(target.dim, np.nan)
    if not np.all(curvatures > 0):  # a saddle has a positive inverse-Hessian diagonal too
        raise ValueError(
            f"laplace_approximation: {target.name} has no mode with a positive-definite Hessian reachable in "
            f"{num_steps} L-BFGS steps from 0 (stopped at {mode.tolist()}, where the Hessian of -log_density has "
            f"eigenvalues {', '.join(f'{c:.3g}' for c in curvatures)})."
        )
    return mode, np.sqrt(np.diag(np.linalg.inv(hessian)))


def reference_draws(name: str, path: str | Path | None = None) -> np.ndarray:
    """Gold-standard draws (num_draws, dim), float64, in the coordinates of the matching `Target` if any.

    Args:
      name: a key of the archive: a target's `reference_key` ("neal_funnel", "banana",
        "logreg_breast_cancer", "eight_schools_centered", "arK"), or one of the archive's
        draws without a `Target` here ("gp_pois_regr", in posteriordb's coordinates).
      path: the .npz archive; default `shared/data/posteriors/reference_draws.npz`.

    Raises:
      FileNotFoundError: if the archive is missing; KeyError for an unknown name.
    """
    path = REFERENCE_DRAWS if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"reference draws not found at {path}; they live in shared/data/posteriors/ beside the repository "
            "(see its README), or pass path=... to reference_draws."
        )
    with np.load(path, allow_pickle=False) as archive:
        available = sorted(key for key in archive.files if archive[key].ndim == 2)
        if name not in available:
            raise KeyError(f"no reference draws named {name!r} in {path}; available: {available}.")
        return np.asarray(archive[name], np.float64)


def _half_cauchy_logpdf(x, scale):
    """log density of |Cauchy(0, scale)| at x > 0."""
    return _LOG_2 + stats.cauchy.logpdf(x, 0.0, scale)


def _posteriordb_data(filename: str) -> dict:
    path = DATA_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"model data not found at {path}; it lives in shared/data/posteriors/ (see README.md).")
    return json.loads(path.read_text())


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised features (569, 30) and 0/1 labels (569,) of the Wisconsin breast-cancer data."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as error:
        raise ImportError("logistic_regression_breast_cancer needs scikit-learn: pip install scikit-learn") from error
    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    return features, labels.astype(float)
