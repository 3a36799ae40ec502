"""Importance-sampling diagnostics: the Pareto k-hat, the effective sample size, log-evidence."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxflow as jf
from jaxflow.train import diagnostics


@functools.cache
def identity_flow():
    """q = N(0, I) in 2-D, the known proposal of every test below."""
    return jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))


def normal_target(loc=0.0, scale=1.0):
    """Normalised N(loc, scale^2 I) in 2-D."""
    return lambda x: -0.5 * jnp.sum(((x - loc) / scale) ** 2) - 2 * jnp.log(scale) - jnp.log(2 * jnp.pi)


def diagnose(log_target, num_samples, seed=0):
    flow = identity_flow()
    run = jax.jit(functools.partial(diagnostics.importance_diagnostics, flow=flow, log_target=log_target,
                                    num_samples=num_samples))
    return run(jax.random.key(seed), params=flow.init(jax.random.key(0)))


def shape_tolerance(shape, num_tail):
    """Four standard errors of a shape estimated from num_tail points, (1 + k) / sqrt(M), plus the prior's pull."""
    return 4 * (1 + shape) / math.sqrt(num_tail) + 10 * abs(shape - 0.5) / (num_tail + 10)


@pytest.mark.parametrize("shape", [-0.3, 0.5, 0.8])
def test_generalized_pareto_fit_agrees_with_scipy_maximum_likelihood(shape):
    x = stats.genpareto.rvs(shape, scale=2.0, size=5000, random_state=np.random.default_rng(0))
    k, sigma = diagnostics.fit_generalized_pareto(x)
    k_ml, _, sigma_ml = stats.genpareto.fit(x, floc=0)
    assert abs(float(k) - k_ml) < 0.02 and abs(float(sigma) - sigma_ml) < 0.05 * sigma_ml
    assert abs(float(k) - shape) < shape_tolerance(shape, x.size)


@pytest.mark.parametrize("shape", [0.5, 0.8])
def test_pareto_k_recovers_the_shape_of_generalized_pareto_weights(shape):
    num_samples = 100_000
    weights = stats.genpareto.rvs(shape, size=num_samples, random_state=np.random.default_rng(1))
    k_hat = float(diagnostics.pareto_k(np.log(weights)))
    assert abs(k_hat - shape) < shape_tolerance(shape, diagnostics.tail_size(num_samples))


@pytest.mark.parametrize("scale", [1.5, 2.0])
def test_k_hat_of_a_normal_proposal_for_a_wider_normal_target(scale):
    # With q = N(0, I) and p = N(0, s^2 I) in 2-D, w = c exp(a |x|^2) with a = (1 - 1/s^2) / 2 and
    # |x|^2 ~ Exponential(1/2): the weights are exactly Pareto with shape k = 1 - 1/s^2.
    num_samples = 100_000
    shape = 1 - 1 / scale**2
    result = diagnose(normal_target(scale=scale), num_samples)
    assert abs(float(result.k_hat) - shape) < shape_tolerance(shape, diagnostics.tail_size(num_samples))


def test_a_target_equal_to_q_gives_flat_weights():
    result = diagnose(normal_target(), 10_000)
    assert float(result.k_hat) < 0.3
    assert float(result.ess) > 0.999
    assert abs(float(result.elbo)) < 1e-4 and abs(float(result.log_evidence)) < 1e-4
    assert float(diagnostics.pareto_k(jnp.zeros(100))) == -np.inf  # exactly equal weights: bounded


def test_weights_tied_at_the_tail_cutoff_fit_only_those_above_it():
    # Two weight values: the tail's cutoff ties with most of it; the weights are bounded (k < 0), never NaN.
    rng = np.random.default_rng(0)
    log_weights = np.where(rng.random(4000) < 0.02, 0.5, 0.0)
    assert float(diagnostics.pareto_k(log_weights)) < 0
    assert np.isfinite(float(diagnostics.pareto_k(np.concatenate([np.zeros(3000), [0.5]]))))  # one above the cutoff
    # Fitting the largest draws of a sample equals fitting them alone.
    x = stats.genpareto.rvs(0.5, size=400, random_state=rng)
    for num_fitted in (150, 3):  # with 3 the grid's size (30 + isqrt(count)) matters: k moved by 2e-3
        top = np.sort(x)[-num_fitted:]
        padded = np.concatenate([np.zeros(400 - num_fitted), top])
        np.testing.assert_allclose(
            diagnostics.fit_generalized_pareto(padded, num_fitted=num_fitted),
            diagnostics.fit_generalized_pareto(top), rtol=1e-5,
        )


def test_nan_infinite_and_unrepresentable_weights_are_the_worst_case():
    # Sorting puts NaN and +inf at the peak; before, every exceedance turned NaN and k_hat read -inf, the best case.
    log_weights = jax.random.normal(jax.random.key(0), (4000,))
    assert float(diagnostics.pareto_k(log_weights.at[5].set(jnp.nan))) == np.inf
    assert float(diagnostics.pareto_k(log_weights.at[5].set(jnp.inf))) == np.inf
    assert np.isfinite(float(diagnostics.pareto_k(log_weights.at[5].set(-jnp.inf))))  # a zero weight is fine
    # One weight 90 nats above the rest: the others' exceedances underflow in float32, so only the peak
    # was fitted and the prior pulled k_hat to 0.22 (float64 fits them: 89.6); now inf. 80 nats: k_hat 1.6.
    peak = log_weights.max()
    assert float(diagnostics.pareto_k(log_weights.at[7].set(peak + 80))) > 1
    assert float(diagnostics.pareto_k(log_weights.at[7].set(peak + 90))) > 1


def test_ess_and_log_evidence_of_a_shifted_normal_target():
    # q = N(0, I), p = N(m, I): E_q[w] = 1 and E_q[w^2] = exp(|m|^2), so ess -> exp(-|m|^2).
    num_samples = 20_000
    loc = jnp.array([0.5, 0.0])
    result = diagnose(normal_target(loc=loc), num_samples)
    log_w = np.asarray(result.log_weights, np.float64)
    w = np.exp(log_w - log_w.max())
    np.testing.assert_allclose(result.ess, w.sum() ** 2 / (num_samples * np.sum(w**2)), rtol=1e-4)
    np.testing.assert_allclose(result.ess, np.exp(-0.25), atol=0.02)
    np.testing.assert_allclose(result.elbo, -0.125, atol=4 * 0.5 / np.sqrt(num_samples))  # -KL(q || p)
    assert abs(float(result.log_evidence)) < 4 * np.sqrt(np.expm1(0.25) / num_samples)  # log Z = 0
    assert float(result.k_hat) < 0.5


def test_too_few_weights_are_refused_and_the_fewest_accepted():
    assert diagnostics.tail_size(diagnostics.MIN_WEIGHTS) == diagnostics.MIN_TAIL
    assert diagnostics.tail_size(diagnostics.MIN_WEIGHTS - 1) < diagnostics.MIN_TAIL
    with pytest.raises(ValueError, match=f"at least {diagnostics.MIN_WEIGHTS} weights .* got 20"):
        diagnostics.pareto_k(jnp.zeros(20))
    assert np.isfinite(diagnostics.pareto_k(jax.random.normal(jax.random.key(0), (21,))))


def test_a_log_target_returning_a_vector_is_refused_clearly():
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    message = r"log_target must map one event of shape \(2,\) to a scalar, got shape \(2,\)"
    with pytest.raises(ValueError, match=message):
        diagnostics.importance_diagnostics(jax.random.key(0), flow, flow.init(jax.random.key(0)), lambda x: -x**2)
