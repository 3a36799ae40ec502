"""Contractive residual flows and spectral normalisation.

References are independent of the code under test: numpy's SVD and slogdet, dense
autodiff Jacobians of the explicit map x -> x + g(x) (so g(x) = inverse(x) - x), matrix
powers of those Jacobians for the truncated series, central finite differences, and
sample means over thousands of keys compared within 5 standard errors computed from the
samples. The kit's contract checks run on the registered cases in tests/test_bijectors.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow.bijectors.residual import residual
from jaxflow.bijectors.spectral_norm import normalise, spectral_norm_bound
from jaxflow.flows import residual_flow
from jaxflow.testing import perturbed_params

DIM = 3
HIDDEN = (8,)
LIPSCHITZ = 0.6  # lipschitz^2 < 1 - p = 0.5: the roulette estimates have finite variance
STANDARD_ERRORS = 5.0

# One compiled program per (bijector, direction, shapes, dtype), reused across tests.
_apply = jax.jit(jf.bijectors.transform, static_argnames=("bijector", "direction"))


def _float64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


KINDS = ("exact", "series", "russian_roulette")


@functools.cache
def _block(kind="exact", num_probes=1):
    """Blocks of one architecture, whatever their log-det: they share params."""
    probes = None if kind == "exact" else num_probes
    return residual(
        DIM, hidden=HIDDEN, activation="tanh", lipschitz=LIPSCHITZ, log_det=kind, num_hutchinson_samples=probes
    )


def _params(seed, scale=1.0):
    return _float64(perturbed_params(_block("exact"), jax.random.key(seed), scale))


def _near_critical_params(seed):
    """Params with ||J_g(x)||_2 close to LIPSCHITZ near x = 0, where random ones give ~0.2.

    g(x) = K2^T tanh(K1^T x + b1) + b2 with K1 = c Q (orthonormal rows Q, 3 x 8) and K2 = c Q^T R
    (R orthogonal), c just below LIPSCHITZ^(1/2): J_g(0) ~ c^2 R^T diag-weighted, and the
    normalisation leaves both kernels as they are.
    """
    keys = jax.random.split(jax.random.key(seed), 4)
    rows = jnp.linalg.qr(jax.random.normal(keys[0], (HIDDEN[0], HIDDEN[0])))[0][:DIM]
    rotation = jnp.linalg.qr(jax.random.normal(keys[1], (DIM, DIM)))[0]
    c = 0.999 * LIPSCHITZ**0.5
    params = _params(seed)
    layers = {
        **params["params"],
        "dense_0": {"kernel": c * rows, "bias": 0.1 * jax.random.normal(keys[2], (HIDDEN[0],))},
        "dense_1": {"kernel": c * rows.T @ rotation, "bias": jax.random.normal(keys[3], (DIM,))},
    }
    return {**params, "params": layers}


@functools.partial(jax.jit, static_argnames=("bijector",))
def _explicit_jacobian(bijector, params, x):
    """d(x + g(x))/dx from autodiff of the explicit map (the key does not change the map)."""
    return jax.jacfwd(lambda v: jf.bijectors.transform(bijector, "inverse", params, v, key=jax.random.key(0))[0])(x)


def _assert_mean_close(samples, expected, extra=0.0):
    samples = np.asarray(samples, np.float64)
    mean, standard_error = samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    error = np.abs(mean - np.asarray(expected))
    allowed = STANDARD_ERRORS * standard_error + extra + 1e-9
    excess = np.max(error - allowed)
    assert excess <= 0, f"sample mean off by {excess:.3g} more than {STANDARD_ERRORS} standard errors (+ {extra:.3g})"


# ---------------------------------------------------------------------------------------------
# Spectral normalisation


def _matrices(rng):
    gaussian = rng.normal(size=(16, 5))
    orthogonal = np.linalg.qr(rng.normal(size=(12, 12)))[0]  # flat spectrum: the bound's worst case
    rank_one = np.outer(rng.normal(size=7), rng.normal(size=3))
    return [gaussian, orthogonal, rank_one, 1e-30 * gaussian, 1e30 * gaussian, np.array([[0.0, -2.5]])]


@pytest.mark.float64
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_spectral_norm_bound_brackets_the_largest_singular_value(dtype):
    for matrix in _matrices(np.random.default_rng(0)):
        weight = jnp.asarray(matrix, dtype)
        sigma = np.linalg.norm(np.asarray(weight, np.float64), 2)
        bound = float(jax.jit(spectral_norm_bound)(weight))
        eps = float(jnp.finfo(dtype).eps)
        slack = min(matrix.shape) ** (1 / 512) * (1 + 4 * max(matrix.shape) * eps)
        assert sigma <= bound <= sigma * slack * (1 + 4 * eps), (matrix.shape, sigma, bound)


def test_spectral_norm_bound_multiplies_at_full_precision_under_a_lower_default():
    # A GPU's default TF32 products could put the bound below sigma; every product asks for HIGHEST.
    with jax.default_matmul_precision("tensorfloat32"):
        program = jax.jit(spectral_norm_bound).lower(jnp.ones((4, 3))).as_text()
    assert program.count("dot_general") == 1 + 8 and program.count("precision = [HIGHEST, HIGHEST]") == 9


def test_spectral_norm_bound_of_zero_is_zero_with_finite_gradients():
    zero = jnp.zeros((4, 3))
    assert float(jax.jit(spectral_norm_bound)(zero)) == 0.0
    gradient = jax.jit(jax.grad(lambda w: jnp.sum(normalise(w, coefficient=0.9))))(zero)
    np.testing.assert_array_equal(gradient, np.ones((4, 3)))  # the identity map: zero is within the bound


def test_spectral_norm_bound_gradient_holds_for_tiny_weights():
    """The bound is homogeneous of degree 1, so its gradient is the same at W and s W; it was NaN below s = 1e-19."""
    weight = jax.random.normal(jax.random.key(0), (8, 6))
    gradient = jax.grad(spectral_norm_bound)(weight)
    for scale in (1e-10, 1e-20, 1e-30):
        np.testing.assert_allclose(jax.grad(spectral_norm_bound)(scale * weight), gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.float64
def test_normalise_only_shrinks():
    rng = np.random.default_rng(1)
    small = jnp.asarray(rng.normal(size=(6, 4)))
    small = small * 0.5 / np.linalg.norm(small, 2)
    np.testing.assert_array_equal(normalise(small, coefficient=0.9), small)
    large = 10 * small
    shrunk = np.asarray(normalise(large, coefficient=0.9))
    assert 0.9 / 1.01 <= np.linalg.norm(shrunk, 2) <= 0.9
    np.testing.assert_allclose(shrunk / np.linalg.norm(shrunk), large / np.linalg.norm(large), rtol=1e-12)


@pytest.mark.parametrize(
    "weight, kwargs, error, message",
    [
        (jnp.ones(3), {}, ValueError, r"expects a matrix of shape \(rows, columns\), got shape \(3,\)"),
        (jnp.ones((2, 2), jnp.int32), {}, TypeError, "expects a floating-point matrix, got dtype int32"),
        (jnp.ones((2, 2)), {"coefficient": 0.0}, ValueError, "coefficient must be > 0, got 0.0"),
    ],
)
def test_normalise_rejects_bad_input(weight, kwargs, error, message):
    with pytest.raises(error, match=message):
        normalise(weight, **{"coefficient": 0.9, **kwargs})


# ---------------------------------------------------------------------------------------------
# Lipschitz constant of g


@pytest.mark.float64
@pytest.mark.parametrize("activation", ["lipswish", "elu", "tanh"])
def test_lipschitz_constant_of_g_stays_below_the_coefficient_for_huge_params(activation):
    bijector = residual(DIM, hidden=(16, 16), activation=activation, lipschitz=0.9, context_dim=2)

    def g(params, x, context):
        return bijector.inverse(params, x, context)[0] - x

    @jax.jit
    def ratios_and_jacobians(params, a, b, contexts):
        pairs = jax.vmap(g, in_axes=(None, 0, 0))
        differences = pairs(params, a, contexts) - pairs(params, b, contexts)
        ratios = jnp.linalg.norm(differences, axis=1) / jnp.linalg.norm(a - b, axis=1)
        return ratios, jax.vmap(jax.jacfwd(g, argnums=1), in_axes=(None, 0, 0))(params, a[:200], contexts[:200])

    params = jax.tree.map(lambda a: 10 * a, _float64(perturbed_params(bijector, jax.random.key(3), 1.0)))
    keys = jax.random.split(jax.random.key(4), 4)
    a, b = 3 * jax.random.normal(keys[0], (2000, DIM)), 3 * jax.random.normal(keys[1], (2000, DIM))
    b = b.at[:1000].set(a[:1000] + 1e-3 * jax.random.normal(keys[2], (1000, DIM)))  # close pairs too
    contexts = 3 * jax.random.normal(keys[3], (2000, 2))
    ratios, jacobians = map(np.asarray, ratios_and_jacobians(params, a, b, contexts))
    largest_singular_values = np.linalg.svd(np.asarray(jacobians), compute_uv=False)[:, 0]
    assert np.max(ratios) < 0.9 and largest_singular_values.max() < 0.9, (np.max(ratios), largest_singular_values.max())


@pytest.mark.float64
def test_a_linear_g_is_scaled_to_the_coefficient_exactly():
    bijector = residual(DIM, hidden=(), lipschitz=0.8)  # g(x) = W x + b
    params = jax.tree.map(lambda a: 10 * a, _float64(perturbed_params(bijector, jax.random.key(5), 1.0)))
    jacobian = _explicit_jacobian(bijector, params, jnp.zeros(DIM)) - np.eye(DIM)
    assert 0.8 / 1.003 <= np.linalg.norm(jacobian, 2) <= 0.8


# ---------------------------------------------------------------------------------------------
# The fixed-point direction


@pytest.mark.float64
def test_fresh_blocks_are_the_identity():
    x = jnp.array([0.3, -1.2, 2.0])
    for kind in KINDS:
        bijector = _block(kind)
        params = _float64(bijector.init(jax.random.key(0)))
        for direction in ("forward",) if kind == "exact" else ("inverse",):
            y, log_det = _apply(bijector, direction, params, x, key=jax.random.key(1))
            np.testing.assert_array_equal(y, x, err_msg=f"{kind} {direction}")
            np.testing.assert_array_equal(log_det, 0.0, err_msg=f"{kind} {direction}")


def test_fixed_point_inverts_a_near_critical_block_to_rounding(dtype):
    bijector = residual(DIM, hidden=(32,), lipschitz=0.99)
    x64 = dtype == "float64"
    dtype = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: 10 * a, perturbed_params(bijector, jax.random.key(6), 1.0))
    xs = 3 * jax.random.normal(jax.random.key(7), (200, DIM), dtype)
    zs, _ = jax.jit(jax.vmap(bijector.inverse, in_axes=(None, 0)))(params, xs)
    back, _ = jax.jit(jax.vmap(bijector.forward, in_axes=(None, 0)))(params, zs)
    error = np.max(np.linalg.norm(back - xs, axis=1) / np.linalg.norm(xs, axis=1))
    assert error < (1e-12 if x64 else 3e-5), error


def test_fixed_point_inverts_inputs_whose_squared_norm_overflows(dtype):
    # |x| measured with squares was inf past 1.8e19 in float32 (1.3e154 in float64): the iteration
    # stopped after one step and returned a point 5% off.
    bijector = residual(2, hidden=(8,), activation="elu", lipschitz=0.97)
    params = perturbed_params(bijector, jax.random.key(0), 3.0)
    for scale in (1e20, 1e30) if dtype == "float32" else (1e160, 1e300):
        x = jnp.array([0.6, 0.8], dtype) * scale
        back, _ = jax.jit(bijector.forward)(params, bijector.inverse(params, x)[0])
        assert np.max(np.abs(back - x)) / scale < (1e-6 if dtype == "float32" else 1e-13)


def test_fixed_point_iterates_past_moves_that_round_to_equal_sizes():
    # g(x) = W x with W ~ -lip I: I + J_g = (1 - lip) I is perfectly conditioned, yet in float32 consecutive
    # moves round to equal sizes long before the error reaches rounding (an earlier rule stopped at the first).
    x = jnp.array([1.0, -2.0, 0.5], jnp.float32)
    params = {"params": {"dense_0": {"kernel": -10 * jnp.eye(3), "bias": jnp.zeros(3)}}}
    for lipschitz, bound in ((0.97, 2e-5), (0.99, 1.5e-4)):  # the earlier rule: 4.9e-5 and 3.5e-4
        bijector = residual(3, hidden=(), lipschitz=lipschitz)
        back, _ = jax.jit(bijector.forward)(params, bijector.inverse(params, x)[0])
        assert np.linalg.norm(back - x) / np.linalg.norm(x) < bound


@pytest.mark.float64
def test_fixed_point_tolerance_and_iteration_cap_are_honoured():
    make = functools.partial(residual, DIM, hidden=HIDDEN, activation="tanh", lipschitz=LIPSCHITZ)
    params, x = jax.tree.map(lambda a: 10 * a, _params(8, 1.0)), jnp.array([1.0, -2.0, 0.5])
    z, _ = _apply(_block("exact"), "inverse", params, x)
    loose, _ = make(fixed_point_tol=1e-3).forward(params, z)
    one_step, _ = make(fixed_point_max_iter=1).forward(params, z)
    g_of_z = _apply(_block("exact"), "inverse", params, z)[0] - z
    # The step that stops moves by <= tol (1 - Lip) |x|, so the error is <= tol |x| Lip.
    assert 1e-12 < np.linalg.norm(loose - x) <= 1e-3 * np.linalg.norm(loose) * LIPSCHITZ
    np.testing.assert_allclose(one_step, z - g_of_z, rtol=1e-12)


@pytest.mark.float64
def test_forward_derivatives_follow_the_implicit_function_theorem():
    bijector = _block("exact")

    def loss(p, z):
        x, log_det = bijector.forward(p, z)
        return jnp.sum(jnp.sin(x)) + log_det

    @jax.jit
    def derivatives(params, z):
        forward = lambda v: bijector.forward(params, v)[0]  # noqa: E731
        return jax.jacfwd(forward)(z), jax.jacrev(forward)(z), jax.grad(loss)(params, z)

    params, z = _params(9, 1.0), jnp.array([0.4, -1.0, 1.7])
    jacobian_forward, jacobian_reverse, gradient = derivatives(params, z)
    x, _ = _apply(bijector, "forward", params, z)
    np.testing.assert_allclose(jacobian_forward @ _explicit_jacobian(bijector, params, x), np.eye(DIM), atol=1e-12)
    np.testing.assert_allclose(jacobian_reverse, jacobian_forward, atol=1e-12)

    direction = _float64(perturbed_params(bijector, jax.random.key(10), 1.0))
    step = 1e-6
    shifted = [jax.tree.map(lambda p, d, s=s: p + s * step * d, params, direction) for s in (1, -1)]
    losses = [jnp.sum(jnp.sin(x)) + log_det for x, log_det in (_apply(bijector, "forward", p, z) for p in shifted)]
    directional = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction)))
    np.testing.assert_allclose(directional, (losses[0] - losses[1]) / (2 * step), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Stochastic log-dets


def _truncated_series(jacobian, num_terms):
    """sum_{k<=n} (-1)^(k+1) tr(J^k) / k from dense matrix powers."""
    return sum((-1) ** (k + 1) * jnp.trace(jnp.linalg.matrix_power(jacobian, k)) / k for k in range(1, num_terms + 1))


@functools.partial(jax.jit, static_argnames=("bijector",))
def _estimates_and_gradients(bijector, params, x, keys):
    """Per key: the inverse log-det estimate and its gradient with respect to (params, x)."""
    estimate = lambda p, v, k: bijector.inverse(p, v, key=k)[1]  # noqa: E731
    return jax.vmap(jax.value_and_grad(estimate, argnums=(0, 1)), in_axes=(None, None, 0))(params, x, keys)


@functools.partial(jax.jit, static_argnames=("num_terms",))
def _reference(params, x, num_terms=None):
    """(log-det, its gradient) from the explicit map's dense Jacobian; the series truncated if num_terms is given."""
    exact = _block("exact")

    def log_det(p, v):
        jacobian = jax.jacfwd(lambda u: exact.inverse(p, u)[0])(v)
        if num_terms is None:
            return jnp.linalg.slogdet(jacobian)[1]
        return _truncated_series(jacobian - jnp.eye(DIM), num_terms)

    return jax.value_and_grad(log_det, argnums=(0, 1))(params, x)


def _flat(gradients, batch=()):
    """Concatenates the leaves of a gradient pytree, keeping leading `batch` axes."""
    return np.concatenate([np.reshape(leaf, (*batch, -1)) for leaf in jax.tree.leaves(gradients)], axis=-1)


def _check_estimator(kind, seed, num_keys, num_probes=1):
    bijector = _block(kind, num_probes)
    params, x = _near_critical_params(seed), 0.3 * jax.random.normal(jax.random.key(seed + 100), (DIM,))
    keys = jax.random.split(jax.random.key(seed + 200), num_keys)
    values, gradients = _estimates_and_gradients(bijector, params, x, keys)
    gradients = _flat(gradients, (num_keys,))
    exact, exact_gradient = _reference(params, x)
    if kind == "series":
        num_terms = 8
        truncated, truncated_gradient = _reference(params, x, num_terms)
        _assert_mean_close(values, truncated)
        _assert_mean_close(gradients, _flat(truncated_gradient))
        q = np.linalg.norm(np.asarray(_explicit_jacobian(bijector, params, x)) - np.eye(DIM), 2)
        bias_bound = DIM * q ** (num_terms + 1) / ((num_terms + 1) * (1 - q))
        _assert_mean_close(values, exact, extra=bias_bound)
    else:
        _assert_mean_close(values, exact)
        _assert_mean_close(gradients, _flat(exact_gradient))


@pytest.mark.float64
@pytest.mark.parametrize("kind", ["series", "russian_roulette"])
def test_estimates_and_their_gradients_are_right_on_average(kind):
    _check_estimator(kind, seed=11, num_keys=10_000)


@pytest.mark.slow
@pytest.mark.float64
@pytest.mark.parametrize("num_probes", [1, 3])
@pytest.mark.parametrize("kind", ["series", "russian_roulette"])
@pytest.mark.parametrize("seed", [12, 13, 14, 15])
def test_estimates_and_their_gradients_are_right_on_average_many_keys(kind, seed, num_probes):
    _check_estimator(kind, seed=seed, num_keys=200_000, num_probes=num_probes)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lipschitz": 1.0},
        {"lipschitz": 0.0},
        {"activation": "relu"},
        {"log_det": "hutchinson"},
        {"num_series_terms": 0},
        {"num_hutchinson_samples": 0},
        {"roulette_stop_probability": 1.0},
        {"hidden": (8, 0)},
        {"hidden": 64},
        {"context_dim": 0},
        {"fixed_point_tol": 0.0},
        {"fixed_point_max_iter": 0},
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError, match=f"residual: {next(iter(kwargs))} must"):
        residual(DIM, **kwargs)


@pytest.mark.parametrize(
    "log_det, kwargs, message",
    [
        ("exact", {"num_series_terms": 50}, r"log_det='exact' does not use num_series_terms; leave it unset, or "
         r"choose a log_det that does \(series, russian_roulette\)"),
        ("exact", {"num_hutchinson_samples": 4, "roulette_stop_probability": 0.1}, "does not use "
         "num_hutchinson_samples, roulette_stop_probability; leave them unset"),
        ("series", {"roulette_stop_probability": 0.1}, r"log_det='series' does not use roulette_stop_probability; .*"
         r"\(russian_roulette\)"),
    ],
)
def test_estimator_options_the_log_det_ignores_are_refused(log_det, kwargs, message):
    """They were accepted and did nothing: exact log-dets with num_series_terms=50 were the same numbers."""
    with pytest.raises(ValueError, match=message):
        residual(DIM, log_det=log_det, **kwargs)
    with pytest.raises(ValueError, match=message):
        residual_flow(DIM, log_det=log_det, **kwargs)


def test_bad_calls_raise_clear_errors():
    bijector, stochastic = _block("exact"), _block("series")
    conditional = residual(DIM, hidden=(4,), context_dim=2)
    params, x = bijector.init(jax.random.key(0)), jnp.zeros(DIM)
    with pytest.raises(ValueError, match=r"estimates its log-det stochastically: pass key=\.\.\."):
        stochastic.inverse(params, x)
    with pytest.raises(ValueError, match=rf"expected one event of shape \({DIM},\) .* got shape \({DIM + 1},\)"):
        bijector.forward(params, jnp.zeros(DIM + 1))
    with pytest.raises(TypeError, match="expected a floating-point data-side input, got dtype int32"):
        bijector.inverse(params, jnp.zeros(DIM, jnp.int32))
    with pytest.raises(ValueError, match=r"is conditional and needs a context of shape \(2,\), got None"):
        conditional.forward(conditional.init(jax.random.key(0)), x)
    with pytest.raises(ValueError, match=r"is unconditional but got a context of shape \(2,\)"):
        bijector.forward(params, x, jnp.zeros(2))
