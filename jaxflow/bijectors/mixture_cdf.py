"""The logistic-mixture CDF transformer of Flow++.

Per element, with K logistic components of weights pi_k, means mu_k and scales s_k,

    F(x) = sum_k pi_k sigmoid((x - mu_k) / s_k)        a strictly increasing CDF,
    y    = a * logit(F(x)) + b                          a bijection of the real line.

Raw params per element, `theta` of size 3K + 2, are laid out as
[logits (K), raw means (K), raw log-scales (K), b, raw a]: pi = softmax(logits),
mu_k = r_k raw mean_k and log s_k = B tanh(r_k raw_k / B) with B = `max_log_scale` (a
smooth clamp keeping every component's slope within [e^-B, e^B]) and fixed rates r_k
in [0.5, 1.5] that tell the components apart (`component_rates`), and (b, raw a) is the theta of
`transformers.affine`, so a = softplus(raw a + c) + min_scale is 1 at raw a = 0
(an unbounded exp(log a) would overflow).

Identity at theta = 0: the K components are then the same standard logistic, so
F = sigmoid and y = logit(sigmoid(x)) = x, exactly up to rounding.

Numerics: log F, log(1 - F) and log F' are log-sum-exps of log-sigmoids and
log-densities of the components, never differences of CDFs, so the map, its
log-derivative and their gradients stay finite for |x| up to 1e4 and beyond in float32.

Inverse: solving logit(F(x)) = z, with z = (y - b) / a. Each component's own
root x_k = mu_k + s_k z brackets it: at min_k x_k every component CDF is at most
sigmoid(z), and so is their mixture; at max_k x_k all are at least sigmoid(z). The
bracket is searched with `root_finding.solve_monotone` (Newton steps safeguarded
by bisection; tolerance 4 machine epsilons relative, at most 100 iterations by
default), and gradients through the solution come from the implicit function theorem.

Direction: Flow++ applies the closed form in the data -> latent (density) direction,
so by default it is the transformer's `inverse` and sampling solves for the root;
`closed_form="forward"` swaps the two (e.g. for reverse-KL training).

References: Ho et al. (2019), Flow++, https://arxiv.org/abs/1902.00275
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors import root_finding, transformers
from jaxflow.bijectors._checks import is_positive_int
from jaxflow.bijectors.transformers import Transformer

_DIRECTIONS = ("inverse", "forward")


def component_rates(num_components: int) -> np.ndarray:
    """Fixed factors in [0.5, 1.5], one per component, on its raw mean and log-scale.

    With zero-initialised conditioners every component starts equal and the loss is
    symmetric in them: their gradients stay equal under SGD and Adam alike, and the
    mixture never becomes more than one logistic (an affine map). Distinct rates keep
    theta = 0 the identity and the function class unchanged, but move the components
    apart from the first step.
    """
    return np.linspace(0.5, 1.5, num_components) if num_components > 1 else np.ones(1)


def mixture_components(theta, *, max_log_scale: float = 7.0):
    """Component log-weights, means and log-scales from raw params.

    Args:
      theta: (..., 3K) raw params: logits, raw means, raw log-scales.
      max_log_scale: bound B on |log s|.

    Returns:
      `(log_weights, means, log_scales)`, each (..., K).
    """
    logits, raw_means, raw_log_scales = jnp.split(theta, 3, axis=-1)
    rates = jnp.asarray(component_rates(logits.shape[-1]), theta.dtype)
    log_scales = max_log_scale * jnp.tanh(rates * raw_log_scales / max_log_scale)
    return jax.nn.log_softmax(logits, axis=-1), rates * raw_means, log_scales


def logit_mixture_cdf(log_weights, means, log_scales, x):
    """z = logit(F(x)) for the logistic mixture F, and log dz/dx.

    Args:
      log_weights, means, log_scales: (..., K) components (log-weights normalised).
      x: (...) points, broadcasting against the components' leading axes.

    Returns:
      `(z, log_derivative)`, each of the broadcast shape of x and the leading axes.
    """
    u = (jnp.asarray(x)[..., None] - means) * jnp.exp(-log_scales)
    log_cdf_terms = jax.nn.log_sigmoid(u)
    log_sf_terms = jax.nn.log_sigmoid(-u)
    log_cdf = jax.nn.logsumexp(log_weights + log_cdf_terms, axis=-1)
    log_sf = jax.nn.logsumexp(log_weights + log_sf_terms, axis=-1)
    log_pdf = jax.nn.logsumexp(log_weights + log_cdf_terms + log_sf_terms - log_scales, axis=-1)
    return log_cdf - log_sf, log_pdf - log_cdf - log_sf


def mixture_bracket(means, log_scales, z):
    """An interval [lower, upper] holding the x with logit(F(x)) = z, whatever the weights.

    Args:
      means, log_scales: (..., K) components.
      z: (...) targets.

    Returns:
      `(lower, upper)`: the smallest and largest of the components' roots mu_k + s_k z.
    """
    roots = means + jnp.exp(log_scales) * z[..., None]
    return jnp.min(roots, axis=-1), jnp.max(roots, axis=-1)


def logistic_mixture_cdf(
    num_components: int = 4,
    *,
    max_log_scale: float = 7.0,
    min_scale: float = 1e-3,
    closed_form: str = "inverse",
    tol: float | None = None,
    max_iter: int = root_finding.DEFAULT_MAX_ITER,
) -> Transformer:
    """The Flow++ transformer y = a * logit(F(x)) + b; see the module docstring.

    Args:
      num_components: K, the number of logistics in the mixture.
      max_log_scale: bound on |log s_k|, finite and positive.
      min_scale: lower bound on the output scale a (as in `transformers.affine`).
      closed_form: "inverse" (Flow++: closed-form density, sampling by root finding)
        or "forward" (closed-form sampling, density by root finding).
      tol: relative tolerance of the root finder; defaults to 4 machine epsilons.
      max_iter: iteration cap of the root finder.

    Returns:
      A `Transformer` with `num_params = 3 * num_components + 2`.
    """
    _check_config(num_components, max_log_scale, closed_form, tol, max_iter)
    output = transformers.affine(min_scale)
    split = 3 * num_components

    def components(theta):
        return mixture_components(theta[..., :split], max_log_scale=max_log_scale)

    def evaluate(theta, x):
        z, log_derivative = logit_mixture_cdf(*components(theta), x)
        y, log_scale = output.forward(theta[..., split:], z)
        return y, log_derivative + log_scale

    def solve(theta, y):
        z, log_det_output = output.inverse(theta[..., split:], y)
        mixture = components(theta)
        lower, upper = mixture_bracket(mixture[1], mixture[2], z)
        x = root_finding.solve_monotone(
            lambda v: logit_mixture_cdf(*mixture, v)[0], z, lower, upper, tol=tol, max_iter=max_iter
        )
        return x, log_det_output - logit_mixture_cdf(*mixture, x)[1]

    forward, inverse = (solve, evaluate) if closed_form == "inverse" else (evaluate, solve)
    return Transformer(split + 2, forward, inverse, "logistic_mixture_cdf")


def _check_config(num_components, max_log_scale, closed_form, tol, max_iter):
    if not is_positive_int(num_components):
        raise ValueError(f"logistic_mixture_cdf: num_components must be a positive int, got {num_components!r}.")
    if not (max_log_scale > 0 and np.isfinite(max_log_scale)):  # B tanh(raw / B) is NaN for B = inf
        raise ValueError(f"logistic_mixture_cdf: max_log_scale must be finite and positive, got {max_log_scale!r}.")
    if closed_form not in _DIRECTIONS:
        raise ValueError(f"logistic_mixture_cdf: closed_form must be one of {_DIRECTIONS}, got {closed_form!r}.")
    # Checked here, not first when sampling (perhaps after a whole fit by density).
    if not (tol is None or (isinstance(tol, numbers.Real) and not isinstance(tol, bool) and 0 < tol < np.inf)):
        raise ValueError(f"logistic_mixture_cdf: tol must be None or positive and finite, got {tol!r}.")
    if not is_positive_int(max_iter):
        raise ValueError(f"logistic_mixture_cdf: max_iter must be a positive int, got {max_iter!r}.")
