"""The Flow++ logistic-mixture CDF transformer: scipy agreement, monotonicity, inverse accuracy, tails, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads
from scipy import special, stats

from jaxflow.bijectors.mixture_cdf import logistic_mixture_cdf, logit_mixture_cdf, mixture_bracket, mixture_components

K = 3
MIXTURE = logistic_mixture_cdf(K)
NUM_PARAMS = 3 * K + 2
density_direction = jax.jit(MIXTURE.inverse)  # the closed form y = a logit(F(x)) + b
sampling_direction = jax.jit(MIXTURE.forward)  # its root-finding inverse


def _gradients(kernel):
    def loss(theta, x):
        out, log_det = kernel(theta, x)
        return jnp.sum(jnp.sin(out)) + jnp.sum(log_det)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


density_gradients, sampling_gradients = _gradients(MIXTURE.inverse), _gradients(MIXTURE.forward)


def _random_components(rng, size, spread):
    weights = rng.dirichlet(np.ones(K), size)
    return np.log(weights), spread * rng.normal(size=(size, K)), rng.uniform(-3, 3, (size, K))


def _scipy_logit_mixture_cdf(log_weights, means, log_scales, x):
    """logit(F(x)) and log dlogit(F)/dx from scipy's logistic log-cdf, log-sf and log-pdf."""
    x, scales = x[:, None], np.exp(log_scales)
    log_cdf, log_sf, log_pdf = (
        special.logsumexp(log_weights + fn(x, means, scales), axis=-1)
        for fn in (stats.logistic.logcdf, stats.logistic.logsf, stats.logistic.logpdf)
    )
    return log_cdf - log_sf, log_pdf - log_cdf - log_sf


@pytest.mark.float64
def test_logit_mixture_cdf_matches_scipy():
    rng = np.random.default_rng(0)
    components = _random_components(rng, 500, spread=2.0)
    x = rng.uniform(-6, 6, 500)
    z, log_derivative = logit_mixture_cdf(*map(jnp.asarray, components), jnp.asarray(x))
    expected_z, expected_log_derivative = _scipy_logit_mixture_cdf(*components, x)
    np.testing.assert_allclose(z, expected_z, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(log_derivative, expected_log_derivative, rtol=1e-9, atol=1e-9)


@pytest.mark.float64
def test_map_is_increasing_and_its_log_det_is_the_autodiff_log_derivative():
    rng = np.random.default_rng(1)
    theta = jnp.asarray(rng.normal(0, 2.0, (20, 1, NUM_PARAMS)))
    x = jnp.broadcast_to(jnp.linspace(-40.0, 40.0, 801), (20, 801))
    y, log_det = density_direction(theta, x)
    assert np.all(np.diff(np.asarray(y), axis=-1) > 0)
    slope = jax.vmap(jax.vmap(jax.grad(lambda t, v: MIXTURE.inverse(t, v)[0], argnums=1), (None, 0)))(theta[:, 0], x)
    np.testing.assert_allclose(log_det, np.log(slope), rtol=1e-9, atol=1e-9)


@pytest.mark.float64
def test_bracket_holds_the_root():
    rng = np.random.default_rng(2)
    log_weights, means, log_scales = map(jnp.asarray, _random_components(rng, 1000, spread=20.0))
    z = jnp.asarray(rng.normal(0, 10, 1000))
    lower, upper = mixture_bracket(means, log_scales, z)
    assert np.all(logit_mixture_cdf(log_weights, means, log_scales, lower)[0] <= z + 1e-9)
    assert np.all(logit_mixture_cdf(log_weights, means, log_scales, upper)[0] >= z - 1e-9)


def _extreme_params(rng, size, dtype):
    """Means from -1e3 to 1e3, raw log-scales up to +-30 (clamped to +-7), weights down to e^-30."""
    logits = rng.normal(0, 8, (size, K))
    means = rng.choice([-1e3, -1.0, 0.0, 3.0, 1e3], (size, K))
    raw_log_scales = rng.choice([-30.0, -5.0, 0.0, 5.0, 30.0], (size, K))
    return jnp.asarray(np.concatenate([logits, means, raw_log_scales, rng.normal(0, 2, (size, 2))], -1), dtype)


def test_inverse_is_accurate_to_float_precision_for_extreme_params(dtype):
    """Both round trips are within a few ulps of the input, in the units its conditioning allows."""
    rng, eps = np.random.default_rng(3), np.finfo(dtype).eps
    theta = _extreme_params(rng, 400, dtype)
    as64 = lambda *arrays: [np.asarray(a, np.float64) for a in arrays]  # noqa: E731

    y = jnp.asarray(rng.normal(0, 20, 400), dtype)
    x, log_det = sampling_direction(theta, y)
    y_again, log_det_again = density_direction(theta, x)
    x, y, y_again, slope = as64(x, y, y_again, jnp.exp(log_det_again))
    # x within a few ulps of the root moves y by slope * ulp(x); y itself rounds to ulp(y).
    assert np.all(np.abs(y_again - y) <= 8 * eps * (slope * (1 + np.abs(x)) + 1 + np.abs(y)))
    # log-dets are sums of O(1) log terms: absolute rounding of order eps even where they are near 0.
    np.testing.assert_allclose(log_det, -log_det_again, rtol=8 * eps, atol=8 * eps)

    x = jnp.asarray(rng.normal(0, 3, 400), dtype)
    y, log_det = density_direction(theta, x)
    x_again, _ = sampling_direction(theta, y)
    x, y, x_again, log_det = as64(x, y, x_again, log_det)
    # Where the map is flat, y barely determines x: the bound grows like 1 / slope. Below a
    # slope of eps, one ulp of y spans more than the region where the slope is constant.
    determined = log_det > max(-20.0, np.log(eps))
    assert determined.mean() > 0.5
    x, y, x_again, slope = x[determined], y[determined], x_again[determined], np.exp(log_det[determined])
    assert np.all(np.abs(x_again - x) <= 8 * eps * (1 + np.abs(x) + (1 + np.abs(y)) / slope))


@pytest.mark.float64
def test_inverse_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    theta, y = jnp.asarray(rng.normal(0, 1, (6, NUM_PARAMS))), jnp.asarray(rng.normal(0, 2, 6))
    check_grads(jax.jit(MIXTURE.forward), (theta, y), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.float64
def test_inverse_gradient_is_the_implicit_function_theorem_one():
    rng = np.random.default_rng(5)
    theta, y = jnp.asarray(rng.normal(0, 1, NUM_PARAMS)), jnp.asarray(1.3)
    x = sampling_direction(theta, y)[0]
    closed_form_gradients = jax.jit(jax.grad(lambda t, v: MIXTURE.inverse(t, v)[0], argnums=(0, 1)))
    by_theta, by_x = closed_form_gradients(theta, x)
    solution_gradient = jax.jit(jax.grad(lambda t: MIXTURE.forward(t, y)[0]))(theta)
    np.testing.assert_allclose(solution_gradient, -by_theta / by_x, rtol=1e-10)


def test_zero_params_give_the_identity():
    assert MIXTURE.num_params == NUM_PARAMS
    x = jnp.array([-1e4, -30.0, -1.0, -1e-3, 0.0, 1e-3, 2.0, 50.0, 1e4])
    for kernel in (density_direction, sampling_direction):
        y, log_det = kernel(jnp.zeros(NUM_PARAMS), x)
        np.testing.assert_allclose(y, x, rtol=2e-7, atol=1e-6)
        np.testing.assert_allclose(log_det, 0.0, atol=1e-6)


def test_closed_form_forward_swaps_the_directions():
    swapped = logistic_mixture_cdf(K, closed_form="forward")
    theta, x = jax.random.normal(jax.random.key(0), (5, NUM_PARAMS)), jnp.linspace(-3, 3, 5)
    for ours, theirs in ((swapped.forward, density_direction), (swapped.inverse, sampling_direction)):
        np.testing.assert_array_equal(jnp.stack(jax.jit(ours)(theta, x)), jnp.stack(theirs(theta, x)))


def test_mixture_components_bound_the_log_scales_and_normalise_the_weights():
    raw = jnp.concatenate([jnp.array([0.0, 50.0, -50.0]), jnp.zeros(3), jnp.array([-1e4, 0.0, 1e4])])
    log_weights, _, log_scales = mixture_components(raw, max_log_scale=5.0)
    np.testing.assert_allclose(jnp.sum(jnp.exp(log_weights)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(log_scales, [-5.0, 0.0, 5.0], atol=1e-6)


@given(
    theta=hnp.arrays(np.float32, (8, NUM_PARAMS), elements=st.floats(-6, 6, width=32)),
    x=hnp.arrays(np.float32, (8,), elements=st.floats(-1e4, 1e4, width=32)),
)
def test_huge_inputs_give_finite_values_and_gradients(theta, x):
    for direction, kernel, gradients in (
        ("density", density_direction, density_gradients),
        ("sampling", sampling_direction, sampling_gradients),
    ):
        for leaf in (*kernel(theta, x), *gradients(theta, x)):
            assert np.all(np.isfinite(leaf)), f"{direction}: non-finite output for |x| <= {np.max(np.abs(x))}"


def test_nan_params_give_nan_draws_not_finite_ones():
    """A NaN residual moved neither end of the bracket: sampling settled on a finite x with a NaN log-det."""
    transformer = logistic_mixture_cdf(3)
    theta = jnp.zeros(transformer.num_params).at[0].set(jnp.nan)  # one NaN logit
    x, log_det = transformer.forward(theta, 0.7)  # a Python scalar: the closed form read x[..., None] of it
    assert np.isnan(x) and np.isnan(log_det)
    np.testing.assert_allclose(transformer.inverse(jnp.zeros(transformer.num_params), 0.5)[0], 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_components=0), "num_components"),
        (dict(num_components=2.0), "num_components"),
        (dict(max_log_scale=0.0), "max_log_scale"),
        (dict(max_log_scale=float("inf")), "max_log_scale must be finite and positive, got inf"),
        (dict(closed_form="both"), "closed_form"),
        # Accepted before and failing first when sampling (tol=-1, max_iter=0), or wrong roots (tol=inf).
        (dict(tol=-1.0), "tol must be None or positive and finite, got -1.0"),
        (dict(tol=float("inf")), "tol must be None or positive and finite, got inf"),
        (dict(max_iter=0), "max_iter must be a positive int, got 0"),
        (dict(max_iter=2.5), "max_iter must be a positive int, got 2.5"),
        (dict(max_iter=True), "max_iter must be a positive int, got True"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        logistic_mixture_cdf(**kwargs)
