"""The rational-quadratic spline: agreement with distrax, fuzzing at knots, bounds and far tails, and errors."""

import functools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxflow.bijectors.spline import (
    rational_quadratic_spline,
    spline_bijector,
    spline_forward,
    spline_inverse,
    spline_knots,
)

NUM_BINS, BOUND, NUM_ELEMENTS = 4, 2.0, 8
SPLINE = rational_quadratic_spline(num_bins=NUM_BINS, bound=BOUND)
NUM_PARAMS = SPLINE.num_params

# The fuzz tests build knots once and apply the spline on exactly those: each jit fuses the
# knot arithmetic its own way, and knots one ulp apart would defeat "exactly on a knot".
knots_of = jax.jit(functools.partial(spline_knots, bound=BOUND))
forward, inverse = jax.jit(spline_forward), jax.jit(spline_inverse)


def _log_derivative(kernel):
    """x -> log |kernel'(x)| for an element-wise kernel: the gradient of the sum is each element's derivative."""
    derivative = jax.grad(lambda knots, x: jnp.sum(kernel(knots, x)[0]), argnums=1)
    return lambda knots, x: jnp.log(derivative(knots, x))


log_derivative = _log_derivative(spline_forward)
log_derivative_and_slope = jax.jit(
    lambda knots, x: (log_derivative(knots, x), jax.grad(lambda v: jnp.sum(log_derivative(knots, v)))(x))
)
inverse_log_derivative = jax.jit(_log_derivative(spline_inverse))


def _gradients(kernel):
    """Gradients of a scalar loss with respect to the kernel's params (theta or knots) and input."""

    def loss(params, x):
        out, log_det = kernel(params, x)
        return jnp.sum(jnp.sin(out)) + jnp.sum(log_det)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


GRADIENTS = [_gradients(kernel) for kernel in (SPLINE.forward, SPLINE.inverse, spline_forward, spline_inverse)]


def _raw_params(rng, num_params, rows=48):
    """Raw params of moderate size, and a sixth of the rows at the extremes +-50."""
    extreme = rows // 6
    moderate = 3.0 * rng.normal(size=(rows - extreme, num_params))
    return np.concatenate([moderate, rng.choice([-50.0, 50.0], (extreme, num_params))])


def _distrax_spline(theta, num_bins, bound, min_size, min_derivative):
    """The same spline in distrax: its params put the (ignored) end derivatives around ours."""
    widths_and_heights, derivatives = theta[..., : 2 * num_bins], theta[..., 2 * num_bins :]
    pad = np.zeros((*theta.shape[:-1], 1))
    params = np.concatenate([widths_and_heights, pad, derivatives, pad], axis=-1)
    return distrax.RationalQuadraticSpline(
        jnp.asarray(params),
        range_min=-bound,
        range_max=bound,
        boundary_slopes="identity",
        min_bin_size=2 * bound * min_size,  # distrax's minimum is absolute, ours a fraction of the range
        min_knot_slope=min_derivative,
    )


@pytest.mark.float64
@pytest.mark.parametrize(
    "num_bins, bound, min_size, min_derivative", [(1, 1.0, 1e-3, 1e-3), (4, 2.0, 1e-2, 0.05), (8, 3.0, 1e-3, 1e-3)]
)
def test_matches_distrax(num_bins, bound, min_size, min_derivative):
    rng = np.random.default_rng(num_bins)
    spline = rational_quadratic_spline(num_bins, bound, min_size, min_size, min_derivative)
    theta = _raw_params(rng, spline.num_params)
    reference = _distrax_spline(theta, num_bins, bound, min_size, min_derivative)
    knot_kwargs = dict(bound=bound, min_bin_width=min_size, min_bin_height=min_size, min_derivative=min_derivative)
    knots = spline_knots(jnp.asarray(theta), **knot_kwargs)
    for ours, theirs in zip(knots, (reference.x_pos, reference.y_pos, reference.knot_slopes)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)

    # Each library evaluated on its own knots: they agree to an ulp, and a knot one ulp
    # off puts the input in the neighbouring piece.
    size, pick = len(theta), rng.integers(0, num_bins + 1, len(theta))
    inside = rng.uniform(-bound, bound, size)
    tails = rng.choice([-1.0, 1.0], size) * (bound + rng.exponential(3.0, size))
    for direction, ours, theirs in (("forward", knots[0], reference.x_pos), ("inverse", knots[1], reference.y_pos)):
        kernel = jax.jit(getattr(spline, direction))
        reference_kernel = jax.jit(getattr(reference, f"{direction}_and_log_det"))
        on_knots = [np.asarray(k)[np.arange(size), pick] for k in (ours, theirs)]
        for x, reference_x in ((inside, inside), tuple(on_knots), (tails, tails)):
            out, log_det = kernel(jnp.asarray(theta), jnp.asarray(x))
            expected_out, expected_log_det = reference_kernel(jnp.asarray(reference_x))
            np.testing.assert_allclose(out, expected_out, rtol=1e-10, atol=1e-10, err_msg=direction)
            np.testing.assert_allclose(log_det, expected_log_det, rtol=1e-9, atol=1e-9, err_msg=direction)


# ----- fuzzing: random raw params up to +-50 and inputs inside, on knots, on +-bound and far in the tails -----

KINDS = ("inside", "knot", "bound", "far")


@st.composite
def fuzz_inputs(draw):
    """Raw params (NUM_ELEMENTS, NUM_PARAMS) and, per element, where to put its input."""
    extreme = st.sampled_from([0.0, -50.0, 50.0])
    theta = draw(hnp.arrays(np.float64, (NUM_ELEMENTS, NUM_PARAMS), elements=st.floats(-50, 50) | extreme))
    kind = draw(hnp.arrays(np.int64, NUM_ELEMENTS, elements=st.integers(0, len(KINDS) - 1)))
    fraction = draw(hnp.arrays(np.float64, NUM_ELEMENTS, elements=st.floats(0, 1)))
    knot = draw(hnp.arrays(np.int64, NUM_ELEMENTS, elements=st.integers(0, NUM_BINS)))
    sign = draw(hnp.arrays(np.float64, NUM_ELEMENTS, elements=st.sampled_from([-1.0, 1.0])))
    return theta, (kind, fraction, knot, sign)


def _place(placement, knots):
    """Inputs per element: uniform inside, on one of `knots`, at +-bound, or up to 1e6 away."""
    kind, fraction, knot, sign = placement
    on_knot = np.asarray(knots, np.float64)[np.arange(NUM_ELEMENTS), knot]
    candidates = np.stack([-BOUND + 2 * BOUND * fraction, on_knot, sign * BOUND, sign * 10.0 ** (6 * fraction)])
    return candidates[kind, np.arange(NUM_ELEMENTS)]


def _assert_finite(*trees):
    for leaf in jax.tree.leaves(trees):
        assert np.all(np.isfinite(leaf)), leaf


def _assert_log_det(log_det, knots, x, log_tol, ulps=8):
    """log_det == log f'(x), by float64 autodiff on the same knots, up to a rounding of x by `ulps`.

    The reference upcasts the knots, not the raw params, so it is the very spline under test:
    knots rebuilt in float64 move by ~1e-7, enough to change f' by 1e-3 next to a 0.01-wide
    piece. The kernel itself works with x rounded to its dtype, which moves log f' by its
    slope times that rounding.
    """
    eps = np.finfo(x.dtype).eps
    knots, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (knots, x))
    expected, slope = (np.asarray(a) for a in log_derivative_and_slope(knots, x))
    allowed = log_tol + np.abs(slope) * ulps * eps * (1 + np.abs(np.asarray(x)))
    error = np.abs(np.asarray(log_det, np.float64) - expected)
    assert np.all(error <= allowed), f"log_det != log f'(x): errors {error}, allowed {allowed}"


def _assert_round_trip_in_y(knots, x_back, y, ulps=64):
    """forward(x_back) == y up to `ulps` rounding errors in y and in x_back.

    A rounding error e in x_back moves forward(x_back) by e * f'(x_back); with raw params
    of 50, f' spans 1e-8 to 1e3, so the inverse is judged by this mixed error, not by x alone.
    """
    eps = np.finfo(x_back.dtype).eps
    y_back, log_det = (np.asarray(a, np.float64) for a in forward(knots, x_back))
    y, x_back = np.asarray(y, np.float64), np.asarray(x_back, np.float64)
    allowed = ulps * eps * ((1 + np.abs(y)) + (1 + np.abs(x_back)) * np.exp(log_det))
    error = np.abs(y_back - y)
    assert np.all(error <= allowed), f"forward(inverse(y)) != y: errors {error}, allowed {allowed}"


def _check_fuzz(dtype, inputs):
    raw_theta, placement = inputs
    theta = jnp.asarray(raw_theta, dtype)
    knots = x_knots, y_knots, derivatives = knots_of(theta)
    x = jnp.asarray(_place(placement, x_knots), dtype)
    y_given = jnp.asarray(_place(placement, y_knots), dtype)

    y, log_det = forward(knots, x)
    x_back, inverse_log_det = inverse(knots, y)
    x_given, given_log_det = inverse(knots, y_given)
    _assert_finite(y, log_det, x_back, inverse_log_det, x_given, given_log_det)
    theta_forward, theta_inverse, knots_forward, knots_inverse = GRADIENTS
    _assert_finite(theta_forward(theta, x), theta_inverse(theta, y), theta_inverse(theta, y_given))
    _assert_finite(knots_forward(knots, x), knots_inverse(knots, y), knots_inverse(knots, y_given))

    outside = np.abs(np.asarray(x)) >= BOUND
    np.testing.assert_array_equal(np.asarray(y)[outside], np.asarray(x)[outside])
    np.testing.assert_array_equal(np.asarray(log_det)[outside], 0.0)
    outside_given = np.abs(np.asarray(y_given)) >= BOUND
    np.testing.assert_array_equal(np.asarray(x_given)[outside_given], np.asarray(y_given)[outside_given])

    _assert_round_trip_in_y(knots, x_back, y)
    _assert_round_trip_in_y(knots, x_given, y_given)
    if dtype == "float64":
        np.testing.assert_allclose(x_back, x, rtol=1e-12, atol=1e-6)

    log_tol = 1e-8 if dtype == "float64" else 1e-4
    _assert_log_det(log_det, knots, x, log_tol)
    _assert_log_det(-inverse_log_det, knots, x_back, log_tol)
    _assert_log_det(-given_log_det, knots, x_given, log_tol)
    if dtype == "float64":
        np.testing.assert_allclose(given_log_det, inverse_log_derivative(knots, y_given), atol=log_tol)

    kind, _, knot, _ = placement
    on_knots, picked = kind == KINDS.index("knot"), (np.arange(NUM_ELEMENTS), knot)  # there y = y_k, f' = d_k
    np.testing.assert_array_equal(np.asarray(y)[on_knots], np.asarray(y_knots)[picked][on_knots])
    expected_log_det = np.log(np.asarray(derivatives)[picked])
    np.testing.assert_allclose(np.asarray(log_det)[on_knots], expected_log_det[on_knots], atol=log_tol)


@pytest.mark.float64  # the log-det reference is float64 autodiff, for both dtypes
@settings(max_examples=50)
@given(inputs=fuzz_inputs())
def test_fuzz_finite_invertible_and_exact_log_det(dtype, inputs):
    _check_fuzz(dtype, inputs)


@pytest.mark.slow
@pytest.mark.float64
@settings(max_examples=2000)
@given(inputs=fuzz_inputs())
def test_fuzz_many_examples(dtype, inputs):
    _check_fuzz(dtype, inputs)


# ----- shape of the map -----


def test_monotone(dtype):
    rng = np.random.default_rng(0)
    theta = _raw_params(rng, NUM_PARAMS, rows=8)
    knots = knots_of(jnp.asarray(theta, dtype)[:, None])  # (rows, 1, num_bins + 1): one spline per row
    grid = np.broadcast_to(np.linspace(-BOUND - 1.0, BOUND + 1.0, 2001), (len(theta), 2001))
    x = np.sort(np.concatenate([grid, np.asarray(knots[0])[:, 0]], axis=1).astype(dtype), axis=1)
    y, _ = forward(knots, jnp.asarray(x))
    x_back, _ = inverse(knots, y)
    steps, back_steps = np.diff(np.asarray(y), axis=1), np.diff(np.asarray(x_back), axis=1)
    if dtype == "float64":  # float32 may round neighbours on a nearly flat piece to one value
        assert np.all(steps[np.diff(x, axis=1) > 0] > 0)
    assert np.all(steps >= 0) and np.all(back_steps >= 0)


@pytest.mark.float64
def test_inverse_is_accurate_where_the_quadratic_has_negative_b():
    """A flat piece before a steep knot makes b < 0, where 2c / (-b - sqrt(disc)) cancels."""
    theta = np.full((1, NUM_PARAMS), 9.0)
    theta[0, NUM_BINS] = 0.0  # the first piece is only min_bin_height tall; its right derivative is ~9
    knots = knots_of(jnp.asarray(theta))
    y_lo, y_hi = float(knots[1][0, 0]), float(knots[1][0, 1])
    y = jnp.asarray(y_lo + (y_hi - y_lo) * np.linspace(0.5, 1.0, 501))[:, None]
    x, _ = inverse(knots, y)
    _assert_round_trip_in_y(knots, x, y, ulps=8)


def test_zero_params_are_the_identity(dtype):
    x = jnp.asarray(np.concatenate([np.linspace(-3.0, 3.0, 61), [-BOUND, BOUND, -1e6, 1e6]]), dtype)
    theta = jnp.zeros((*x.shape, NUM_PARAMS), dtype)
    atol = 1e-12 if dtype == "float64" else 1e-6
    for kernel in (SPLINE.forward, SPLINE.inverse):
        out, log_det = jax.jit(kernel)(theta, x)
        np.testing.assert_allclose(out, x, rtol=0, atol=atol)
        np.testing.assert_allclose(log_det, 0.0, atol=atol)


def test_theta_broadcasts_against_x():
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.normal(size=(2, 1, NUM_PARAMS)), jnp.float32)
    x = jnp.asarray(rng.uniform(-3, 3, 3), jnp.float32)
    apply = jax.jit(SPLINE.forward)
    y, log_det = apply(theta, x)
    expected_y, expected_log_det = apply(jnp.broadcast_to(theta, (2, 3, NUM_PARAMS)), jnp.broadcast_to(x, (2, 3)))
    assert y.shape == log_det.shape == (2, 3)
    # Two programs, compiled apart: equal up to the last bits XLA's code generation may choose.
    tight = dict(rtol=4 * np.finfo(np.float32).eps, atol=4 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(y, expected_y, **tight)
    np.testing.assert_allclose(log_det, expected_log_det, **tight)


# ----- derivatives: the kernels' written-out derivatives against autodiff through the knots -----


def _loss(kernel):
    """A scalar of both outputs, so that every derivative of both is exercised."""

    def loss(params, x):
        out, log_det = kernel(params, x)
        return jnp.sum(jnp.sin(out)) + jnp.sum(log_det**2)

    return loss


def _through_knots(direction, **knot_kwargs):
    """The spline of theta through the public knots: plain autodiff, no written-out derivatives."""
    kernel = {"forward": spline_forward, "inverse": spline_inverse}[direction]
    return lambda theta, x: kernel(spline_knots(theta, **knot_kwargs), x)


@pytest.mark.float64
@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("num_bins, min_size", [(1, 1e-3), (4, 0.05), (8, 1e-3)])
def test_derivatives_match_autodiff_through_the_knots(direction, num_bins, min_size):
    """Gradients, forward-mode Jacobians and a second derivative, in theta and x, inside and outside.

    Inputs avoid the knots, where the log-det's derivative in theta jumps from piece to piece.
    """
    rng = np.random.default_rng(num_bins)
    spline = rational_quadratic_spline(num_bins, BOUND, min_size, min_size, 0.01)
    knot_kwargs = dict(bound=BOUND, min_bin_width=min_size, min_bin_height=min_size, min_derivative=0.01)
    theta = jnp.asarray(_raw_params(rng, spline.num_params, rows=12))
    x = jnp.asarray(np.where(np.arange(12) % 4 == 0, 3.0 * BOUND, 1.0) * rng.uniform(-BOUND, BOUND, 12))
    ours, reference = _loss(getattr(spline, direction)), _loss(_through_knots(direction, **knot_kwargs))
    derivatives = {
        "grad": lambda loss: jax.grad(loss, argnums=(0, 1)),
        "jacfwd": lambda loss: jax.jacfwd(loss, argnums=(0, 1)),
        "grad in theta, then d/dx": lambda loss: jax.jacfwd(jax.grad(loss), argnums=1),
        "hessian in x": lambda loss: jax.hessian(loss, argnums=1),
    }
    for name, derivative in derivatives.items():
        got, expected = jax.jit(derivative(ours))(theta, x), jax.jit(derivative(reference))(theta, x)
        for got_leaf, expected_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            scale = float(np.max(np.abs(expected_leaf)))
            np.testing.assert_allclose(got_leaf, expected_leaf, rtol=1e-9, atol=1e-11 * scale, err_msg=name)


# ----- the standalone bijector -----


def test_spline_bijector_starts_at_the_identity_and_sums_the_log_dets():
    bijector = spline_bijector((2, 3), num_bins=3, bound=1.5)
    params = bijector.init(jax.random.key(0))
    assert params["theta"].shape == (2, 3, 8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
    y, log_det = bijector.forward(params, x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)

    params = {"theta": jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)), jnp.float32)}
    y, log_det = bijector.forward(params, x)
    spline = rational_quadratic_spline(num_bins=3, bound=1.5)
    elementwise_y, elementwise_log_det = spline.forward(params["theta"], x)
    np.testing.assert_array_equal(y, elementwise_y)
    np.testing.assert_allclose(log_det, jnp.sum(elementwise_log_det), rtol=1e-6)


# ----- bad input -----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_bins=0), "num_bins"),
        (dict(num_bins=2.0), "num_bins"),
        (dict(num_bins=True), "num_bins"),
        (dict(bound=0.0), "bound"),
        (dict(num_bins=10, min_bin_width=0.1), "min_bin_width"),
        (dict(min_bin_height=0.0), "min_bin_height"),
        (dict(min_derivative=1.0), "min_derivative"),
    ],
)
def test_bad_configuration_is_a_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rational_quadratic_spline(**kwargs)


def test_theta_of_the_wrong_size_is_a_value_error():
    with pytest.raises(ValueError, match=r"theta of shape \(\.\.\., 11\)"):
        SPLINE.forward(jnp.zeros((3, 10)), jnp.zeros(3))


def test_spline_bijector_rejects_wrong_params_and_events():
    bijector = spline_bijector(3, num_bins=2)
    params = bijector.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"params\['theta'\] should have shape \(3, 5\)"):
        bijector.forward({"theta": jnp.zeros((3, 4))}, jnp.zeros(3))
    with pytest.raises(ValueError, match="event of shape"):
        bijector.inverse(params, jnp.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        bijector.forward(params, jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_kernel_maps_each_knot_onto_its_image(direction, dtype):
    """The kernel rebuilds the knots from theta, and XLA may round them differently from `spline_knots`,
    so an input on a knot may land on either side of it; both pieces must map it onto the knot's
    image. A piece assembled from two bins (a wrong bound here, a wrong derivative there) would not.
    """
    num_bins, bound = 8, 3.0
    spline = rational_quadratic_spline(num_bins, bound)
    theta = jnp.asarray(_raw_params(np.random.default_rng(num_bins), spline.num_params, rows=96), dtype)
    x_knots, y_knots, _ = spline_knots(theta, bound=bound)
    source, image = (x_knots, y_knots) if direction == "forward" else (y_knots, x_knots)
    out, log_det = jax.jit(getattr(spline, direction))(theta[:, None, :], source)
    # Knots are sums of up to num_bins fractions of the interval, so each is rounded on the interval's
    # scale (2 * bound), on both axes; an input rounding moves the output by the local slope.
    eps = np.finfo(np.asarray(out).dtype).eps
    slope = np.exp(np.asarray(log_det, np.float64))
    allowed = 64 * eps * 2 * bound * (1 + slope)
    error = np.abs(np.asarray(out, np.float64) - np.asarray(image, np.float64))
    assert np.all(error <= allowed), f"knots mapped off their images: errors up to {error.max()}"
