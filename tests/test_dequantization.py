"""Dequantisation bounds against closed-form discrete log-probabilities, and bits per dimension."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, special, stats

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow.bijectors.mixture_cdf import logistic_mixture_cdf
from jaxflow.dequantization import (
    bits_per_dim,
    dequantized_log_likelihood_bound,
    noise_context,
    uniform_dequantize,
    uniform_dequantized_log_likelihood_bound,
    variational_dequantization,
)
from jaxflow.testing import with_noisy_log_det


def _piecewise_constant(pmf):
    """The density on [0, 1]^D equal to L * pmf[d, cell] in each cell (independent dims)."""
    num_dims, num_levels = pmf.shape

    def log_prob(params, y):
        del params
        cells = jnp.clip(jnp.floor(y * num_levels).astype(jnp.int32), 0, num_levels - 1)
        return jnp.sum(jnp.log(num_levels * pmf[jnp.arange(num_dims), cells]))

    def sample(params, key):
        del params, key
        raise NotImplementedError("not needed here")

    return jf.Distribution(lambda key: (), log_prob, sample, (num_dims,), "piecewise_constant")


def _logit_normal_flow(loc, scale):
    """sigmoid(z) with z ~ N(loc, scale^2) per dimension: a density on (0, 1)^D; returns (flow, params)."""
    num_dims = len(loc)
    flow = jf.Flow(jf.standard_normal(num_dims), jb.chain(jb.affine(num_dims), jb.sigmoid(num_dims)))
    params = {"base": (), "bijector": ({"shift": jnp.asarray(loc), "log_scale": jnp.log(jnp.asarray(scale))}, ())}
    return flow, params


def _logit_normal_cell_log_probs(loc, scale, num_levels):
    """log P(x) = log of the N(loc, scale^2) mass of (logit(x / L), logit((x + 1) / L)), per level; (L,)."""
    edges = special.logit(np.arange(num_levels + 1) / num_levels)  # -inf ... inf
    return np.log(np.diff(stats.norm.cdf(edges, loc, scale)))


def test_uniform_dequantize_lands_in_the_cell_of_each_value():
    x = jnp.array([[0, 3], [255, 17]])
    y = uniform_dequantize(jax.random.key(0), jnp.broadcast_to(x, (4096, 2, 2)), 256)
    assert y.dtype == jnp.float32
    assert np.all(np.floor(np.asarray(y) * 256) == np.asarray(x))
    np.testing.assert_allclose(y.mean(0), (x + 0.5) / 256, atol=3e-4)


def _noise_just_below_one(key, shape, dtype):
    """Stands in for jax.random.uniform: the largest value below 1 it can draw, everywhere."""
    del key
    return jnp.full(shape, jnp.nextafter(jnp.ones((), dtype), jnp.zeros((), dtype)))


def test_every_level_lifted_with_the_largest_noise_stays_in_its_cell(monkeypatch):
    monkeypatch.setattr(jax.random, "uniform", _noise_just_below_one)
    levels = jnp.array([0, 1, 17, 100, 254, 255])
    assert np.all(levels[1:] + _noise_just_below_one(None, (), jnp.float32) == levels[1:] + 1), (
        "precondition: in float32, x + u rounds up to x + 1 for this u"
    )
    y = np.asarray(uniform_dequantize(jax.random.key(0), levels, 256, jnp.float32))
    np.testing.assert_array_equal(np.floor(y * 256), levels)  # was [0, 2, 18, 101, 255, 255]
    with pytest.raises(ValueError, match="float16 cannot resolve 256 levels"):
        uniform_dequantize(jax.random.key(0), levels, 256, jnp.float16)
    model, model_params = _logit_normal_flow([0.0], [1.0])  # logit(1) is infinite: log p(1) is not finite
    bound = uniform_dequantized_log_likelihood_bound(jax.random.key(0), model, model_params, jnp.array([[255]]), 256)
    assert np.all(np.isfinite(bound))


@pytest.mark.parametrize("variational", [False, True])
def test_bounds_pass_a_key_to_a_model_with_a_stochastic_log_det(variational):
    # Both stochastic, so both split the key alike; only the first adds a N(0, 0.1^2) error to each log-det.
    pmf = jnp.full((2, 4), 0.25)
    noisy, exact = (jf.Flow(_piecewise_constant(pmf), with_noisy_log_det(jb.shift(2), scale)) for scale in (0.1, 0.0))
    params, key, x = exact.init(jax.random.key(0)), jax.random.key(1), jnp.array([[1, 2], [3, 0], [0, 0]])
    noise = variational_dequantization(
        jf.Flow(jf.standard_normal(2), jb.affine_coupling(2, hidden=(4,), context_dim=2), context_shape=(2,))
    )
    noise_params = noise.init(jax.random.key(2))

    def bound(model):
        if variational:
            return dequantized_log_likelihood_bound(key, model, params, noise, noise_params, x, 4)
        return uniform_dequantized_log_likelihood_bound(key, model, params, x, 4)

    error = np.asarray(jax.jit(lambda: bound(noisy) - bound(exact))())  # same u and log q: the log-det error
    assert np.all(error != 0) and len(set(error.tolist())) == len(x), "one log-det key per data point"
    assert np.all(np.abs(error) < 0.5)


@pytest.mark.float64
@pytest.mark.parametrize("pmf_kind", ["uniform", "random"])
def test_uniform_bound_is_exact_for_a_density_constant_on_cells(pmf_kind):
    rng, num_levels = np.random.default_rng(0), 5
    pmf = np.full((2, num_levels), 1 / num_levels) if pmf_kind == "uniform" else rng.dirichlet(np.ones(num_levels), 2)
    flow = jf.Flow(_piecewise_constant(jnp.asarray(pmf)), jb.shift(2))
    x = rng.integers(0, num_levels, (30, 2))
    bound = jax.jit(lambda key, params: uniform_dequantized_log_likelihood_bound(key, flow, params, x, num_levels, 3))(
        jax.random.key(1), flow.init(jax.random.key(2))
    )
    expected = np.log(pmf[0, x[:, 0]]) + np.log(pmf[1, x[:, 1]])
    np.testing.assert_allclose(bound, expected, rtol=1e-12)
    if pmf_kind == "uniform":
        np.testing.assert_allclose(bound, -2 * np.log(num_levels), rtol=1e-12)


@pytest.mark.float64
def test_uniform_bound_is_below_the_discrete_log_probability_and_matches_quadrature():
    loc, scale, num_levels, num_samples = 0.4, 0.8, 6, 20000
    flow, params = _logit_normal_flow([loc], [scale])
    x = np.arange(num_levels)[:, None]
    bound = jax.jit(
        lambda key: uniform_dequantized_log_likelihood_bound(key, flow, params, x, num_levels, num_samples)
    )(jax.random.key(0))

    def log_density(y):
        z = special.logit(y)
        return stats.norm.logpdf(z, loc, scale) - np.log(y * (1 - y))

    def cell_bound(k):  # E_{u ~ U[0, 1)}[log p((k + u) / L)] - log L
        return integrate.quad(lambda u: log_density((k + u) / num_levels), 0, 1)[0] - np.log(num_levels)

    def cell_sd(k):  # sd of one draw's log p((k + u) / L), from its second moment
        second = integrate.quad(lambda u: log_density((k + u) / num_levels) ** 2, 0, 1)[0]
        return np.sqrt(second - (cell_bound(k) + np.log(num_levels)) ** 2)

    exact_bound = np.array([cell_bound(k) for k in range(num_levels)])
    log_p = _logit_normal_cell_log_probs(loc, scale, num_levels)
    standard_errors = np.array([cell_sd(k) for k in range(num_levels)]) / np.sqrt(num_samples)
    assert np.all(np.abs(bound - exact_bound) < 5 * standard_errors)  # from 0.0004 (middle) to 0.04 (edges)
    assert np.all(exact_bound < log_p - 1e-3)
    assert np.all(bound < log_p)


def _noise_flow():
    """q(u | x) on (0, 1)^2: two conditional Flow++ couplings (closed form in the sampling direction)."""
    mixture = logistic_mixture_cdf(4, closed_form="forward")
    couplings = [
        jb.coupling(2, mixture, mask=mask, hidden=(16,), context_dim=2) for mask in ([True, False], [False, True])
    ]
    return variational_dequantization(jf.Flow(jf.standard_normal(2), jb.chain(*couplings), context_shape=(2,)))


def test_a_noise_flow_not_confined_to_the_unit_cell_is_refused():
    model, model_params = _logit_normal_flow(np.array([0.3, -0.5]), np.array([0.5, 0.7]))
    unsquashed = jf.Flow(jf.standard_normal(2), jb.affine(2), context_shape=(2,))  # u anywhere on R^2: no bound
    noise_params, x = unsquashed.init(jax.random.key(1)), jnp.zeros((1, 2), int)
    with pytest.raises(ValueError, match=r"must draw u in \(0, 1\)\^D.*variational_dequantization"):
        dequantized_log_likelihood_bound(jax.random.key(0), model, model_params, unsquashed, noise_params, x, 4)


@pytest.mark.slow
def test_variational_bound_beats_the_uniform_one_after_training():
    loc, scale, num_levels = np.array([0.3, -0.5]), np.array([0.5, 0.7]), 2
    model, model_params = _logit_normal_flow(loc, scale)
    noise = _noise_flow()
    x = jnp.array([[i, j] for i in range(num_levels) for j in range(num_levels)])

    def loss(noise_params, key):
        bound = dequantized_log_likelihood_bound(key, model, model_params, noise, noise_params, x, num_levels, 16)
        return -jnp.mean(bound)

    optimiser = optax.adam(1e-2)

    @jax.jit
    def step(state, key):
        noise_params, opt_state = state
        grads = jax.grad(loss)(noise_params, key)
        updates, opt_state = optimiser.update(grads, opt_state)
        return (optax.apply_updates(noise_params, updates), opt_state), None

    noise_params = noise.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 300)
    (noise_params, _), _ = jax.lax.scan(step, (noise_params, optimiser.init(noise_params)), keys)

    key = jax.random.key(2)
    variational = dequantized_log_likelihood_bound(key, model, model_params, noise, noise_params, x, num_levels, 4096)
    uniform = uniform_dequantized_log_likelihood_bound(key, model, model_params, x, num_levels, 4096)
    first, second = (_logit_normal_cell_log_probs(loc[d], scale[d], num_levels) for d in range(2))
    log_p = np.array([first[i] + second[j] for i, j in np.asarray(x)])
    assert np.all(variational > uniform + 0.02)
    assert np.all(variational < log_p + 0.01)
    assert np.all(variational > log_p - 0.3)  # uniform: 6 to 9 nats below


def test_variational_bound_is_differentiable_and_its_noise_lies_in_the_unit_cube():
    model, model_params = _logit_normal_flow([0.0, 0.0], [1.0, 1.0])
    noise = _noise_flow()
    noise_params = noise.init(jax.random.key(0))
    x = jnp.array([[0, 3], [2, 1]])
    u = jax.jit(noise.sample)(noise_params, jax.random.key(1), context=noise_context(x, 4))
    assert u.shape == (2, 2) and np.all((u > 0) & (u < 1))
    def total_bound(params):
        return jnp.sum(dequantized_log_likelihood_bound(jax.random.key(2), model, model_params, noise, params, x, 4))

    grads = jax.jit(jax.grad(total_bound))(noise_params)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))
    assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(grads))


def test_bits_per_dim_by_hand():
    np.testing.assert_allclose(bits_per_dim(-10.0, 4), 10 / (4 * 0.6931471805599453), rtol=1e-6)
    # A uniform model of 8-bit images costs 8 bits per dimension.
    np.testing.assert_allclose(bits_per_dim(jnp.array([-3072 * math.log(256)]), 3072), [8.0], rtol=1e-6)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: uniform_dequantize(jax.random.key(0), jnp.array([0.5]), 4), TypeError, "integer data"),
        (lambda: uniform_dequantize(jax.random.key(0), jnp.array([4]), 4), ValueError, r"\[0, 4\)"),
        (lambda: uniform_dequantize(jax.random.key(0), jnp.array([1]), 0), ValueError, "num_levels"),
        (lambda: bits_per_dim(-1.0, 0), ValueError, "num_dims"),
        # int64 data was narrowed to int32 before the range check: 2**32 + 3 passed as 3.
        (lambda: uniform_dequantize(jax.random.key(0), np.array([2**32 + 3]), 256), ValueError,
         r"data must lie in \[0, 256\), got values in \[4294967299, 4294967299\]"),
        (lambda: noise_context(np.array([9]), 4), ValueError, r"noise_context: data must lie in \[0, 4\)"),
        (lambda: noise_context(jnp.array([0.5]), 4), TypeError, "noise_context: expected integer data"),
        (lambda: variational_dequantization(jf.Flow(jf.standard_normal(2), jb.shift(2))), ValueError, "context_shape"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bound_rejects_data_of_the_wrong_event_shape_and_a_mismatched_noise_flow():
    model, model_params = _logit_normal_flow([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="trailing event shape"):
        uniform_dequantized_log_likelihood_bound(jax.random.key(0), model, model_params, jnp.zeros((5, 3), int), 4)
    with pytest.raises(ValueError, match="num_samples"):
        uniform_dequantized_log_likelihood_bound(jax.random.key(0), model, model_params, jnp.zeros((5, 2), int), 4, 0)
    small_noise = variational_dequantization(jf.Flow(jf.standard_normal(1), jb.shift(1), context_shape=(1,)))
    with pytest.raises(ValueError, match="noise flow"):
        x = jnp.zeros((5, 2), int)
        dequantized_log_likelihood_bound(jax.random.key(0), model, model_params, small_noise, {}, x, 4)


def test_bounds_of_a_conditional_model_take_shared_or_per_row_contexts():
    # A model shifted in logit space by its context: the bound follows the context it is given.
    coupling = jb.affine_coupling(2, hidden=(4,), context_dim=1)
    model = jf.Flow(jf.standard_normal(2), jb.chain(coupling, jb.sigmoid(2)), 1)
    params = jax.tree.map(lambda a: a + 0.3, model.init(jax.random.key(0)))
    x = jnp.array([[0, 3], [2, 1], [1, 1]])
    noise = variational_dequantization(jf.Flow(jf.standard_normal(2), jb.affine(2), context_shape=(2,)))
    noise_params = noise.init(jax.random.key(1))
    for bound, args in (
        (uniform_dequantized_log_likelihood_bound, ()),
        (dequantized_log_likelihood_bound, (noise, noise_params)),
    ):
        def run(context, bound=bound, args=args):
            return bound(jax.random.key(2), model, params, *args, x, 4, 8, context=context)

        shared, per_row = run(jnp.ones(1)), run(jnp.ones((3, 1)))
        np.testing.assert_allclose(shared, per_row, rtol=1e-6)
        assert shared.shape == (3,) and not np.allclose(shared, run(-jnp.ones(1)))
        with pytest.raises(ValueError, match=r"batch shape \(3,\); got a context of batch shape \(2,\)"):
            run(jnp.ones((2, 1)))
        with pytest.raises(ValueError, match="Flow is conditional"):
            run(None)
