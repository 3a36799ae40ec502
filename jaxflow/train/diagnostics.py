"""How far to trust a variational fit: importance weights w = p~(x) / q(x) with x ~ q.

    diag = diagnostics.importance_diagnostics(key, flow, params, log_target, 4096)
    diag.k_hat    # < 0.7: importance sampling with q is reliable; > 0.7: q misses the target's tails

`k_hat` is the shape of a generalized Pareto distribution fitted to the largest
weights (Pareto-smoothed importance sampling); 1 / k_hat bounds the number of
finite moments of the weights. The normalised effective sample size `ess` is
(sum w)^2 / (n sum w^2), 1 when q equals the target.

References: Vehtari et al. (2015, revised 2024) Pareto smoothed importance sampling,
https://arxiv.org/abs/1507.02646; Zhang & Stephens (2009) A new and efficient
estimation method for the generalized Pareto distribution, Technometrics 51(3);
Yao et al. (2018) Yes, but did it work?, https://arxiv.org/abs/1802.02538.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxflow.train._log_target import log_target_values

MIN_TAIL = 5
MIN_WEIGHTS = 5 * (MIN_TAIL - 1) + 1  # the fewest weights whose `tail_size` is MIN_TAIL
_PRIOR_STRENGTH = 10.0  # pseudo-observations of the weak prior on k_hat ...
_PRIOR_SHAPE = 0.5  # ... centred here (Vehtari et al., appendix C)


class ImportanceDiagnostics(NamedTuple):
    """Summaries of log importance weights log w = log p~(x) - log q(x), x ~ q.

    Attributes:
      elbo: mean log w, the evidence lower bound (up to p~'s normaliser).
      log_evidence: log mean w, the importance-sampling estimate of log Z.
      ess: normalised effective sample size in (0, 1].
      k_hat: Pareto shape of the weights' tail; below 0.7 the estimates are reliable.
      log_weights: (num_samples,) the log weights themselves.
    """

    elbo: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    k_hat: jax.Array
    log_weights: jax.Array


def importance_diagnostics(key, flow, params, log_target, num_samples: int = 4096) -> ImportanceDiagnostics:
    """Draws `num_samples` from the flow and summarises the importance weights against `log_target`.

    Args:
      key: PRNG key.
      flow: a `jaxflow.Flow`.
      params: its params.
      log_target: one event -> scalar unnormalised log-density.
      num_samples: draws (at least `MIN_WEIGHTS`, 21, so that the Pareto tail has `MIN_TAIL` points).
    """
    x, log_q = flow.sample_and_log_prob(params, key, (num_samples,))
    return summarize(log_target_values(log_target, x, flow.event_shape) - log_q)


def summarize(log_weights) -> ImportanceDiagnostics:
    """`ImportanceDiagnostics` of given log weights (num_samples,)."""
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim != 1:
        raise ValueError(
            f"expected log weights of shape (num_samples,), got {log_weights.shape}; does log_target return a scalar?"
        )
    log_n = math.log(log_weights.shape[0])
    return ImportanceDiagnostics(
        elbo=jnp.mean(log_weights),
        log_evidence=jax.nn.logsumexp(log_weights) - log_n,
        ess=effective_sample_size(log_weights),
        k_hat=pareto_k(log_weights),
        log_weights=log_weights,
    )


def effective_sample_size(log_weights) -> jax.Array:
    """(sum w)^2 / (n sum w^2): the share of draws an equally good plain sample would need."""
    log_weights = jnp.asarray(log_weights)
    log_n = math.log(log_weights.shape[0])
    return jnp.exp(2 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2 * log_weights) - log_n)


def tail_size(num_samples: int) -> int:
    """Points in the fitted tail, M = ceil(min(n / 5, 3 sqrt(n))) (PSIS with independent draws)."""
    return math.ceil(min(num_samples / 5, 3 * math.sqrt(num_samples)))


def pareto_k(log_weights) -> jax.Array:
    """The PSIS shape estimate k_hat from log weights (num_samples,).

    Fits a generalized Pareto distribution to the M largest weights in excess of
    the (M+1)-th largest, then shrinks the estimate towards 0.5 with the weak
    prior of PSIS (10 pseudo-observations). Only weights strictly above that cutoff
    are fitted (as in PSIS): ties with it are dropped. Weights whose tail is flat (no
    weight above the cutoff) give -inf: they are bounded, the best case. A NaN or +inf
    log weight, or a tail spanning more than the dtype's range (a tail weight e^88 times
    smaller than the largest in float32, whose ratio underflows), gives +inf: the worst.
    """
    log_weights = jnp.ravel(jnp.asarray(log_weights))
    num_tail = tail_size(log_weights.shape[0])
    if num_tail < MIN_TAIL:
        raise ValueError(
            f"pareto_k needs at least {MIN_WEIGHTS} weights (a tail of {MIN_TAIL}), got {log_weights.shape[0]}."
        )
    largest = jnp.sort(log_weights)[-(num_tail + 1) :]
    peak = largest[-1]
    exceedances = jnp.exp(largest[1:] - peak) - jnp.exp(largest[0] - peak)
    num_fitted = jnp.sum(exceedances > 0)
    k, _ = fit_generalized_pareto(exceedances, num_fitted=num_fitted)
    k = (num_fitted * k + _PRIOR_STRENGTH * _PRIOR_SHAPE) / (num_fitted + _PRIOR_STRENGTH)
    smallest_log_ratio = jnp.log(jnp.finfo(largest.dtype).tiny)
    unrepresentable = jnp.any((largest[1:] > largest[0]) & (largest[1:] - peak < smallest_log_ratio))
    worst = jnp.isnan(peak) | (peak == jnp.inf) | unrepresentable
    return jnp.where(worst, jnp.inf, jnp.where(num_fitted > 0, k, -jnp.inf))


def fit_generalized_pareto(x, *, num_fitted=None) -> tuple[jax.Array, jax.Array]:
    """Shape k and scale sigma of a generalized Pareto distribution (location 0) fitted to x >= 0.

    The estimator of Zhang & Stephens (2009): the posterior mean of theta = -k / sigma
    over a grid of quantiles of its prior, weighted by the profile likelihood; then
    k = mean(log(1 - theta x)). Nearly as efficient as maximum likelihood and
    always defined. The density is (1 / sigma) (1 + k x / sigma)^(-1 - 1 / k).

    Args:
      x: (n,) non-negative draws, sorted or not.
      num_fitted: fit only the `num_fitted` largest draws (may be traced; >= 1); None: all.

    Returns:
      `(k, sigma)`, scalars.
    """
    x = jnp.sort(jnp.ravel(jnp.asarray(x)))
    n = x.shape[0]
    count = n if num_fitted is None else jnp.maximum(num_fitted, 1)
    fitted = jnp.arange(n) >= n - count

    def mean(values):
        return jnp.sum(jnp.where(fitted, values, 0.0)) / count

    # Zhang & Stephens' grid has 30 + isqrt(count) points; `count` may be traced, so the grid
    # has room for all n and the points beyond the fitted count's grid get no weight.
    max_grid = 30 + math.isqrt(n)
    num_grid = 30 + jnp.floor(jnp.sqrt(count)).astype(x.dtype)
    quartile_rank = jnp.floor(count / 4 + 0.5).astype(int) - 1  # -1 for a single draw: that draw, as in PSIS
    first_quartile = x[n - count + jnp.where(quartile_rank < 0, count - 1, quartile_rank)]
    j = jnp.arange(1, max_grid + 1, dtype=x.dtype)
    thetas = 1 / x[-1] + (1 - jnp.sqrt(num_grid / jnp.minimum(j - 0.5, num_grid))) / (3 * first_quartile)
    log_likelihood = jax.vmap(lambda theta: _profile_log_likelihood(theta, x, mean, count))(thetas)
    log_likelihood = jnp.where(j <= num_grid, log_likelihood, -jnp.inf)
    weights = jax.nn.softmax(log_likelihood)
    theta = jnp.sum(weights * thetas)
    k = mean(jnp.log1p(-theta * x))
    return k, -k / theta


def _profile_log_likelihood(theta, x, mean, count):
    """Log-likelihood of theta, maximised over the shape (in Zhang & Stephens' sign, minus ours)."""
    negative_k = -mean(jnp.log1p(-theta * x))
    return count * (jnp.log(theta / negative_k) + negative_k - 1)
