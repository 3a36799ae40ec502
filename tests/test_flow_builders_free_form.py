"""Ready-made free-form, residual and Flow++ builders: configuration, densities, estimators, training.

References are independent of the code under test: in 2-D, box masses of the density summed
on a grid against the share of samples in each box (binomial standard errors), scipy's normal
log-density for the maximum-likelihood diagonal Gaussian, dense autodiff Jacobians, and sample
means over thousands of keys compared with the exact log-density within 5 standard errors
computed from the samples. The kit's contract checks run on the registered
cases (jaxflow/testing/cases/flows_free_form.py) in tests/test_bijectors.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import jaxflow as jf
from jaxflow import datasets
from jaxflow.flows.flowpp import flowpp
from jaxflow.flows.free_form import planar_flow, radial_flow, sylvester_flow
from jaxflow.flows.residual import residual_flow
from jaxflow.testing import perturbed_params
from jaxflow.train import forward_kl

STANDARD_ERRORS = 5.0
NUM_SAMPLES = 20_000

BUILDERS_2D = {
    "planar_tanh": lambda: planar_flow(2, layers=3),
    "planar_leaky_relu": lambda: planar_flow(2, layers=3, activation="leaky_relu", negative_slope=0.3),
    "radial": lambda: radial_flow(2, layers=3),
    "sylvester_orthogonal": lambda: sylvester_flow(2, layers=3),
    "sylvester_triangular": lambda: sylvester_flow(2, layers=3, variant="triangular"),
    "residual": lambda: residual_flow(2, layers=2, hidden=(8,), lipschitz=0.9),
    "flowpp": lambda: flowpp(2, layers=2, hidden=(8,), components=3),
}


def _perturbed(flow, seed, scale=0.2):
    return perturbed_params(flow, jax.random.key(seed), scale)


# ---------------------------------------------------------------------------------------------
# Densities


def _grid(half_width, points):
    """Midpoints of a square grid on [-half_width, half_width]^2 and the area of one cell."""
    edges = np.linspace(-half_width, half_width, points + 1)
    axis = (edges[1:] + edges[:-1]) / 2
    return np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2).astype(np.float32), (edges[1] - edges[0]) ** 2


@pytest.mark.parametrize("name", sorted(BUILDERS_2D))
def test_density_integrates_to_the_mass_of_its_samples(name):
    """Box masses from the density (inverse pass) on a grid equal the share of samples (forward pass) in them.

    The big box holds all the mass of most flows; perturbed Flow++ conditioners can give heavy tails,
    which the samples measure. The small box checks the shape of the density.
    """
    flow = BUILDERS_2D[name]()
    params = _perturbed(flow, seed=0)
    samples, log_q_samples = jax.jit(flow.sample_and_log_prob, static_argnums=2)(params, jax.random.key(1), NUM_SAMPLES)
    samples, head = np.asarray(samples), 64
    grid, cell = _grid(10.0, 400)
    log_q = np.asarray(jax.jit(flow.log_prob)(params, np.concatenate([grid, samples[:head]])), np.float64)
    log_q, log_q_head = log_q[:-head], log_q[-head:]  # one compiled call for the grid and the samples
    assert np.isfinite(log_q).all()
    base = stats.norm.logpdf(grid).sum(axis=-1)
    assert np.max(np.abs(log_q - base)) > 0.1, "a perturbed flow should differ from its base distribution"
    for low, high in ((-10.0, 10.0), (-1.0, 0.5)):
        inside = np.all((grid > low) & (grid < high), axis=-1)
        share = np.mean(np.all((samples > low) & (samples < high), axis=-1))
        standard_error = np.sqrt(share * (1 - share) / NUM_SAMPLES)
        assert abs(np.exp(log_q[inside]).sum() * cell - share) <= STANDARD_ERRORS * standard_error + 2e-3
    np.testing.assert_allclose(log_q_head, log_q_samples[:head], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [
    functools.partial(residual_flow, 3, layers=2, hidden=(8,)),
    functools.partial(flowpp, 3, layers=3, hidden=(8,), components=3),
], ids=["residual", "flowpp"])
def test_data_initialised_fresh_flow_is_the_maximum_likelihood_diagonal_gaussian(make):
    flow = make()
    data = np.random.default_rng(0).normal(size=(256, 3)) * [3.0, 0.5, 1.5] + [2.0, -1.0, 0.0]
    data = jnp.asarray(data, jnp.float32)
    params = flow.init(jax.random.key(0))
    bijector_params, _ = jax.jit(functools.partial(jf.initialize_from_data, flow.bijector))(params["bijector"], data)
    log_q = jax.jit(flow.log_prob)({**params, "bijector": bijector_params}, data)
    reference = stats.norm.logpdf(np.asarray(data), data.mean(0), data.std(0)).sum(axis=-1)
    np.testing.assert_allclose(log_q, reference, rtol=1e-4, atol=1e-4)


def test_triangular_sylvester_layers_alternate_their_order():
    """One layer's Jacobian is triangular up to the reversal; two alternating layers fill it."""
    one, two = sylvester_flow(3, layers=1, variant="triangular"), sylvester_flow(3, layers=2, variant="triangular")
    z = jnp.array([0.3, -0.5, 0.8])

    def jacobian(flow, seed):
        params = _perturbed(flow, seed, scale=1.0)["bijector"]
        return np.asarray(jax.jacfwd(lambda v: flow.bijector.forward(params, v)[0])(z))

    upper = jacobian(one, 0)[::-1]  # undo the reversal that ends the layer
    np.testing.assert_array_equal(np.tril(upper, -1), 0.0)
    assert np.all(np.abs(jacobian(two, 0)) > 1e-4)


@pytest.mark.parametrize("make", [
    functools.partial(residual_flow, 2, hidden=(8,)),
    functools.partial(planar_flow, 2),
    functools.partial(sylvester_flow, 2, variant="triangular"),
], ids=["residual", "planar", "sylvester"])
def test_program_does_not_grow_with_layers(make):
    def size(layers):
        flow = make(layers=layers)
        return len(jax.make_jaxpr(flow.log_prob)(flow.init(jax.random.key(0)), jnp.zeros((2, 2))).jaxpr.eqns)

    assert size(2) == size(24)


def test_conditional_residual_flow_uses_its_context():
    flow = residual_flow(2, layers=2, hidden=(8,), context_dim=3)
    assert flow.context_shape == (3,)
    params = _perturbed(flow, seed=2)
    x = jnp.ones((4, 2))
    log_prob = jax.jit(flow.log_prob)
    assert not np.allclose(log_prob(params, x, jnp.zeros(3)), log_prob(params, x, jnp.ones(3)), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Stochastic log-dets


def test_russian_roulette_residual_flow_log_prob_is_unbiased():
    common = {"layers": 2, "hidden": (8,), "lipschitz": 0.6}  # 0.6^2 < 1 - p = 0.5: finite variance
    exact, roulette = residual_flow(3, **common), residual_flow(3, log_det="russian_roulette", **common)
    params = _perturbed(exact, seed=3, scale=1.0)
    x = jax.random.normal(jax.random.key(4), (3, 3))
    keys = jax.random.split(jax.random.key(5), 4000)
    estimates = np.asarray(jax.jit(jax.vmap(lambda k: roulette.log_prob(params, x, key=k)))(keys), np.float64)
    expected = np.asarray(jax.jit(exact.log_prob)(params, x), np.float64)
    standard_error = estimates.std(axis=0, ddof=1) / np.sqrt(len(keys))
    assert np.all(standard_error > 0), "the estimates should vary with the key"
    assert np.all(np.abs(estimates.mean(axis=0) - expected) <= STANDARD_ERRORS * standard_error + 1e-6)
    with pytest.raises(ValueError, match="key"):
        roulette.log_prob(params, x)


# ---------------------------------------------------------------------------------------------
# Training


def test_flowpp_mixture_components_separate_under_adam():
    """Zero-initialised conditioners start all logistics equal; if they stayed equal, every coupling
    would remain affine in the transformed coordinate. A few Adam steps must make it curve."""
    flow = flowpp(2, layers=1, hidden=(8,), components=4, actnorm=False, permute="none")
    data = jnp.asarray(datasets.two_moons(256, seed=0))
    optimizer = optax.adam(1e-2)
    params = flow.init(jax.random.key(0))
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        gradient = jax.grad(lambda p: -jnp.mean(flow.log_prob(p, data)))(params)
        updates, state = optimizer.update(gradient, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)

    def transformed(x1, x0):  # the coupling maps x[1] given x[0] (data -> base)
        return flow.bijector.inverse(params["bijector"], jnp.stack([x0, x1]))[0][1]

    points = jnp.linspace(-1.5, 1.5, 7)
    curvature = jax.jit(jax.vmap(jax.grad(jax.grad(transformed))))(points, 0.5 * points)
    assert np.max(np.abs(curvature)) > 1e-4  # ~3e-3 here; ~5e-8 (rounding) if the components stay equal


@pytest.mark.slow
def test_training_through_the_roulette_estimator_nearly_matches_training_with_the_exact_log_det():
    """Same flow, data, steps and keys; the estimator's noisy gradients cost some likelihood.

    Measured after 1000 steps: -1.40 nats (exact) and -1.56 (roulette); the fresh flow scores -2.84.
    """
    common = {"layers": 6, "hidden": (32, 32), "lipschitz": 0.9}
    train, test = datasets.two_moons(4096, seed=0), datasets.two_moons(4096, seed=1)
    exact = residual_flow(2, **common)
    params = exact.init(jax.random.key(0))
    test_log_lik = {}
    for log_det in ("exact", "russian_roulette"):
        flow = residual_flow(2, log_det=log_det, **common)
        fitted, _ = forward_kl.fit(
            jax.random.key(1), flow, params, train, optimizer=optax.adam(optax.cosine_decay_schedule(5e-3, 1000)),
            batch_size=256, num_steps=1000, validation_fraction=0.0, progress=False,
        )
        test_log_lik[log_det] = float(jnp.mean(jax.jit(exact.log_prob)(fitted, test)))
    assert test_log_lik["exact"] > -1.5, test_log_lik
    assert test_log_lik["russian_roulette"] > test_log_lik["exact"] - 0.25, test_log_lik


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("build, message", [
    (lambda: planar_flow(0), "dim"),
    (lambda: planar_flow(3, activation="relu"), "activation"),
    (lambda: planar_flow(3, activation="leaky_relu", negative_slope=2.0), "negative_slope"),
    (lambda: radial_flow(3, layers=0), "layers must be an integer >= 1, got 0"),
    (lambda: sylvester_flow(3, variant="diagonal"), "variant"),
    (lambda: sylvester_flow(3, num_vectors=4), "num_vectors"),
    (lambda: sylvester_flow(3, variant="triangular", num_vectors=2), "num_vectors"),
    (lambda: sylvester_flow(3, variant="triangular", num_householder=2), "householder"),
    (lambda: residual_flow(3, lipschitz=1.0), "lipschitz"),
    (lambda: residual_flow(3, log_det="hutchinson"), "log_det"),
    (lambda: residual_flow(3, hidden=(8, 0)), "hidden"),
    (lambda: flowpp(1), "flowpp: dim must be an integer >= 2"),
    (lambda: flowpp(3, components=0), "num_components"),
    (lambda: flowpp(3, closed_form="both"), "closed_form"),
    (lambda: flowpp(3, permute="sideways"), "permute"),
])
def test_bad_configuration_is_refused_with_a_clear_message(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unconditional_flows_refuse_a_context():
    flow = planar_flow(2, layers=2)
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(flow.init(jax.random.key(0)), jnp.zeros(2), jnp.zeros(3))
