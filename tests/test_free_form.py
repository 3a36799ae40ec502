"""Planar, radial and Sylvester flows and the bracketed root finders behind their inverses.

References are independent of the code under test: scipy's brentq, closed-form
implicit derivatives, autodiff Jacobians (slogdet of jacfwd), numpy QR and
Householder products, central finite differences, and round trips through the
closed-form forward maps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jaxflow.bijectors import stack
from jaxflow.bijectors.planar import planar, radial
from jaxflow.bijectors.root_finding import bisection, solve_monotone
from jaxflow.bijectors.sylvester import householder_columns, orthonormal_columns, sylvester
from jaxflow.testing import CASES, perturbed_params

NAMES = [
    "planar_tanh", "planar_leaky_relu", "radial",
    "sylvester_orthogonal", "sylvester_householder", "sylvester_triangular",
]
DIM = 4


def _bijector(name):
    return CASES[name](jax.random.key(0))[0]


# ---------------------------------------------------------------------------------------------
# Root finding


def _tanh_equation(gain, shift):
    return lambda x: x + gain * jnp.tanh(x + shift)


def _brentq_root(gain, shift, target):
    """scipy's root of x + gain tanh(x + shift) = target (the root lies within |gain| of the target)."""
    reach = abs(gain) + 1
    return optimize.brentq(lambda x: x + gain * np.tanh(x + shift) - target, target - reach, target + reach, xtol=1e-15)


EQUATIONS = [
    (gain, shift, target)
    for gain in (-0.999, -0.5, 0.0, 2.0, 50.0)
    for shift in (-3.0, 0.0, 1.5)
    for target in (-20.0, -0.4, 0.0, 7.0)
]


@pytest.mark.float64
@pytest.mark.parametrize("solver", [solve_monotone, bisection])
def test_solvers_match_brentq(solver):
    gains, shifts, targets = (jnp.array(column) for column in zip(*EQUATIONS))

    def solve(gain, shift, target):
        reach = jnp.abs(gain)
        return solver(_tanh_equation(gain, shift), target, target - reach, target + reach)

    roots = jax.jit(jax.vmap(solve))(gains, shifts, targets)
    for (gain, shift, target), root in zip(EQUATIONS, np.asarray(roots)):
        expected = _brentq_root(gain, shift, target)
        assert abs(root - expected) <= 1e-12 * (1 + abs(expected)), (gain, shift, target, root, expected)


@pytest.mark.float64
def test_newton_steps_converge_much_faster_than_bisection():
    equation, target = _tanh_equation(2.0, 0.3), 0.7
    expected = optimize.brentq(lambda x: equation(x) - target, -5, 5, xtol=1e-15)
    newton = float(solve_monotone(equation, target, target - 2.0, target + 2.0, max_iter=7))
    halving = float(bisection(equation, target, target - 2.0, target + 2.0, max_iter=7))
    assert abs(newton - expected) < 1e-12
    assert abs(halving - expected) > 1e-4  # seven halvings of a width-4 bracket cannot get closer than ~0.03


@pytest.mark.float64
def test_bracket_catches_a_diverging_newton_step():
    lower, upper, target = -1.0, 30.0, 1.4
    midpoint = 0.5 * (lower + upper)
    plain_newton = midpoint - (np.arctan(midpoint) - target) * (1 + midpoint**2)
    assert not lower < plain_newton < upper  # unguarded Newton leaves the bracket from the first step
    root = solve_monotone(jnp.arctan, target, lower, upper)
    np.testing.assert_allclose(root, np.tan(target), rtol=1e-13)


@pytest.mark.float64
@pytest.mark.parametrize(
    ("gain", "shift", "target"),
    [
        pytest.param(5.93, -0.834, -3.52, id="newton-cycles-inside-the-bracket"),  # caught by the halving test
        pytest.param(194.0, 2.852, 3.176, id="newton-step-rounds-to-zero-at-the-root"),  # needs the closed bracket
    ],
)
def test_newton_safeguards_keep_hard_equations_fast(gain, shift, target):
    """Equations on which Newton-in-bracket without each safeguard is still off after 20 iterations (60+ needed)."""
    expected = _brentq_root(gain, shift, target)
    root = float(solve_monotone(_tanh_equation(gain, shift), target, target - gain, target + gain, max_iter=20))
    assert abs(root - expected) <= 1e-13 * (1 + abs(expected))


@pytest.mark.float64
def test_gradients_follow_the_implicit_function_theorem():

    def root(target, gain):
        return solve_monotone(_tanh_equation(gain, 0.3), target, target - jnp.abs(gain), target + jnp.abs(gain))

    target, gain = jnp.array(0.7), jnp.array(2.0)
    x = root(target, gain)
    d_target, d_gain = jax.jit(jax.grad(root, argnums=(0, 1)))(target, gain)
    slope = 1 + gain * (1 - np.tanh(x + 0.3) ** 2)
    np.testing.assert_allclose(d_target, 1 / slope, rtol=1e-12)
    np.testing.assert_allclose(d_gain, -np.tanh(x + 0.3) / slope, rtol=1e-12)
    step = 1e-6
    central = (root(target, gain + step) - root(target, gain - step)) / (2 * step)
    np.testing.assert_allclose(d_gain, central, rtol=1e-7)


def test_element_wise_arrays_match_scalar_solves():
    targets = jnp.linspace(-3.0, 3.0, 7)
    equation = _tanh_equation(1.5, -0.2)
    together = solve_monotone(equation, targets, targets - 1.5, targets + 1.5)
    one_by_one = jax.vmap(lambda t: solve_monotone(equation, t, t - 1.5, t + 1.5))(targets)
    np.testing.assert_allclose(together, one_by_one, atol=1e-6)
    np.testing.assert_allclose(equation(together), targets, atol=1e-5)


def test_root_finding_rejects_bad_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        solve_monotone(lambda x: x, jnp.array(1), 0, 2)
    with pytest.raises(ValueError, match="max_iter >= 1"):
        bisection(lambda x: x, 1.0, 0.0, 2.0, max_iter=0)
    with pytest.raises(ValueError, match="tol > 0"):
        solve_monotone(lambda x: x, 1.0, 0.0, 2.0, tol=0.0)


# ---------------------------------------------------------------------------------------------
# Log-dets, invertibility and inverse accuracy of every layer


@functools.partial(jax.jit, static_argnames="name")
def _numerics(name, keys, points, param_scale):
    """For every params draw (one per key, perturbed by `param_scale`) and every point x:
    the forward log-det, the forward Jacobian, and the relative errors of
    inverse(forward(x)), forward(inverse(x)) and of the inverse log-det, as arrays
    with leading axes (keys, points). Both tests below share its compilation."""
    bijector = _bijector(name)
    relative = lambda actual, expected: jnp.max(jnp.abs(actual - expected) / (1 + jnp.abs(expected)))  # noqa: E731

    def at(params, x):
        y, log_det = bijector.forward(params, x)
        jacobian = jax.jacfwd(lambda v: bijector.forward(params, v)[0])(x)
        # One traced inverse serves both round trips.
        inverse_both = jax.vmap(bijector.inverse, in_axes=(None, 0))
        (x_back, x_before), (inverse_log_det, _) = inverse_both(params, jnp.stack([y, x]))
        y_again, _ = bijector.forward(params, x_before)
        errors = jnp.stack([relative(x_back, x), relative(y_again, x), relative(-inverse_log_det, log_det)])
        return log_det, jacobian, errors

    def per_draw(key):
        return jax.vmap(at, in_axes=(None, 0))(perturbed_params(bijector, key, param_scale), points)

    return jax.vmap(per_draw)(keys)


def _numerics_float64(name, param_scale):
    """`_numerics` over 20 params draws and 30 points at scales 1, 3 and 30 (30 saturates tanh)."""
    points = jnp.concatenate([scale * jax.random.normal(jax.random.key(scale), (10, DIM)) for scale in (1, 3, 30)])
    results = _numerics(name, jax.random.split(jax.random.key(1), 20), points, param_scale)
    return tuple(np.asarray(result).reshape(600, *result.shape[2:]) for result in results)


@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_jacobian_and_det_is_positive_at_large_params(name):
    """Params of scale 5: the constraint must keep every Jacobian determinant positive.

    Where the Jacobian is too ill-conditioned for float64 to resolve its determinant
    (condition number > 1e8, e.g. w . u_hat within 1e-8 of -1), only finiteness is checked.
    """
    log_dets, jacobians, _ = _numerics_float64(name, 5.0)
    assert np.all(np.isfinite(log_dets))
    resolved = np.linalg.cond(jacobians) < 1e8
    assert resolved.sum() >= 200, f"only {resolved.sum()} of 600 draws well-conditioned enough to compare"
    signs, expected = np.linalg.slogdet(jacobians[resolved])
    np.testing.assert_array_equal(signs, 1.0)
    np.testing.assert_allclose(log_dets[resolved], expected, rtol=1e-7, atol=1e-7)


@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
def test_inverse_is_accurate_over_many_points_and_params(name):
    """600 (params of scale 1, point) pairs in float64, to within the conditioning of each.

    A round trip cannot beat the rounding of y amplified by the inverse, about
    eps * cond(Jacobian); allowed: 1e3 eps cond per pair. Measured worst ratio 141
    (Householder Sylvester); worst error 9.7e-12 (leaky ReLU planar, cond 8e3),
    1e-13 or less for the others.
    """
    _, jacobians, errors = _numerics_float64(name, 1.0)
    allowed = 1e3 * np.finfo(np.float64).eps * np.linalg.cond(jacobians)
    worst = np.argmax(errors.max(axis=1) / allowed)
    assert np.all(errors.max(axis=1) <= allowed), (errors[worst], allowed[worst])


def _relative_error(actual, expected):
    """max |actual - expected| / (1 + |expected|), as in the kit."""
    return np.max(np.abs(np.asarray(actual, np.float64) - expected) / (1 + np.abs(expected)))


def _planar_params(w, u, bias, dtype=jnp.float64):
    return {"w": jnp.asarray(w, dtype), "u": jnp.asarray(u, dtype), "bias": jnp.asarray(bias, dtype)}


def test_planar_tanh_inverts_where_the_activation_saturates(dtype):
    dtype = jnp.dtype(dtype)
    bijector = planar(DIM)
    params = _planar_params([4.0, -2.0, 1.0, 0.5], [0.8, 0.3, -1.5, 2.0], 0.7, dtype)
    w = params["w"]
    along = jnp.array([-12.0, -6.0, -0.05, 0.0, 0.05, 6.0, 12.0], dtype)
    # w . x + b runs from -11.3 to 12.7.
    x = jnp.outer(along, w / jnp.dot(w, w)) + jnp.array([0.3, -0.2, 0.1, 0.4], dtype)
    y, log_det = jax.vmap(bijector.forward, in_axes=(None, 0))(params, x)
    x_back, inverse_log_det = jax.vmap(bijector.inverse, in_axes=(None, 0))(params, y)
    x, log_det, x_back, inverse_log_det = (np.asarray(a, np.float64) for a in (x, log_det, x_back, inverse_log_det))
    tol = 1e-5 if dtype == "float32" else 1e-13
    assert _relative_error(x_back, x) < tol
    np.testing.assert_allclose(inverse_log_det, -log_det, atol=tol)
    assert abs(log_det[0]) < 1e-6 and abs(log_det[-1]) < 1e-6  # saturated: Jacobian ~ identity


@pytest.mark.float64
def test_planar_leaky_relu_exercises_both_branches():
    negative_slope = 0.2
    bijector = planar(DIM, activation="leaky_relu", negative_slope=negative_slope)
    params = _planar_params([1.0, -0.5, 0.3, 0.8], [-0.7, 0.2, 0.5, -0.1], 0.25)
    points = jax.random.normal(jax.random.key(3), (200, DIM))
    pre_activation = points @ params["w"] + params["bias"]
    y, log_det = jax.vmap(bijector.forward, in_axes=(None, 0))(params, points)
    x_back, _ = jax.vmap(bijector.inverse, in_axes=(None, 0))(params, y)
    jacobians = jax.vmap(jax.jacfwd(lambda v: bijector.forward(params, v)[0]))(points)
    expected = np.linalg.slogdet(np.asarray(jacobians))[1]
    log_det, x_back, points = np.asarray(log_det), np.asarray(x_back), np.asarray(points)
    positive = np.asarray(pre_activation) > 0
    assert 20 < positive.sum() < 180
    np.testing.assert_allclose(log_det, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x_back, points, rtol=1e-12, atol=1e-12)
    # One log-det per branch, and they differ: 1 + m on the right, 1 + m * slope on the left.
    assert np.ptp(log_det[positive]) < 1e-12 and np.ptp(log_det[~positive]) < 1e-12
    assert abs(log_det[positive][0] - log_det[~positive][0]) > 0.1


def test_planar_starts_at_the_identity_with_a_useful_gradient():
    bijector = planar(DIM)
    params = bijector.init(jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (DIM,))
    y, log_det = bijector.forward(params, x)
    np.testing.assert_array_equal(y, x)
    assert abs(log_det) <= jnp.finfo(log_det.dtype).eps  # softplus(log(e - 1)) = 1 up to rounding
    assert np.linalg.norm(params["w"]) > 0.1
    grad_u = jax.grad(lambda p: jnp.sum(jnp.sin(bijector.forward(p, x)[0])))(params)["u"]
    assert np.linalg.norm(grad_u) > 1e-3


def _radial_params(beta_raw):
    return {"center": jnp.array([0.3, -1.0, 2.0, 0.0]), "log_alpha": jnp.array(0.4), "beta_raw": jnp.array(beta_raw)}


@pytest.mark.float64
def test_radial_inverts_near_and_far_from_its_center():
    bijector = radial(DIM)
    direction = jnp.array([0.5, -0.5, 0.5, 0.5])
    radii = jnp.array([1e-9, 1e-3, 0.5, 1.0, 10.0, 1e4])
    for beta_raw in (-6.0, 0.0, 3.0):  # alpha + beta = 0.4% of alpha, beta = 0, beta > 0
        params = _radial_params(beta_raw)
        x = params["center"] + radii[:, None] * direction
        y, log_det = jax.vmap(bijector.forward, in_axes=(None, 0))(params, x)
        x_back, inverse_log_det = jax.vmap(bijector.inverse, in_axes=(None, 0))(params, y)
        np.testing.assert_allclose(x_back, x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-12, atol=1e-12)


def test_radial_stays_finite_where_squared_radii_overflow():
    # Squaring |x - x0| overflowed float32 past 1.8e19 (NaN outputs); the map there is near the identity.
    bijector = radial(DIM)
    direction = jnp.array([0.5, -0.5, 0.5, 0.5], jnp.float32)
    for beta_raw in (-6.0, 3.0):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _radial_params(beta_raw))
        for radius in (1e20, 1e30, 1e38):
            x = radius * direction
            y, log_det = bijector.forward(params, x)
            x_back, inverse_log_det = bijector.inverse(params, y)
            np.testing.assert_allclose(y, x, rtol=1e-6)
            np.testing.assert_allclose(x_back, x, rtol=1e-6)
            assert abs(float(log_det)) < 1e-6 and float(inverse_log_det) == -float(log_det)


@pytest.mark.float64
def test_radial_is_smooth_at_its_center():
    bijector = radial(DIM)
    params = _radial_params(-1.0)
    y, log_det = bijector.forward(params, params["center"])
    jacobian = jax.jacfwd(lambda v: bijector.forward(params, v)[0])(params["center"])
    def both_directions(p, v):
        return bijector.forward(p, v)[1] + jnp.sum(bijector.inverse(p, v)[0])

    gradients = jax.grad(both_directions, argnums=(0, 1))(params, params["center"])
    y, log_det, jacobian, center = (np.asarray(a) for a in (y, log_det, jacobian, params["center"]))
    np.testing.assert_allclose(y, center, atol=1e-15)
    # At r = 0 the map scales by (alpha + beta) / alpha in every direction.
    np.testing.assert_allclose(jacobian, np.eye(DIM) * jacobian[0, 0], atol=1e-15)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jacobian)[1], rtol=1e-13)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(gradients))


# ---------------------------------------------------------------------------------------------
# Sylvester's Q


def test_q_is_orthonormal_to_float_precision(dtype):
    basis = 5.0 * jax.random.normal(jax.random.key(6), (6, 4))
    reflections = 5.0 * jax.random.normal(jax.random.key(7), (3, 6))
    tol = 10 * float(jnp.finfo(basis.dtype).eps)
    for q in (orthonormal_columns(basis), householder_columns(reflections, 4)):
        assert q.dtype == basis.dtype and q.shape == (6, 4)
        np.testing.assert_allclose(q.T @ q, np.eye(4), atol=tol)


@pytest.mark.float64
def test_orthogonal_q_is_gram_schmidt_of_the_basis():
    basis = jax.random.normal(jax.random.key(8), (6, 4))
    q = orthonormal_columns(basis)
    expected, r = np.linalg.qr(np.asarray(basis))
    np.testing.assert_allclose(q, expected * np.sign(np.diag(r)), atol=1e-13)
    assert np.all(np.diag(np.asarray(q).T @ np.asarray(basis)) > 0)


@pytest.mark.float64
def test_householder_q_matches_a_product_of_reflections():
    reflections = jax.random.normal(jax.random.key(9), (3, 5))
    q = householder_columns(reflections, 2)
    product = np.eye(5)
    for v in np.asarray(reflections):
        product = product @ (np.eye(5) - 2 * np.outer(v, v) / (v @ v))
    np.testing.assert_allclose(q, product[:, :2], atol=1e-13)


def test_sylvester_moves_points_only_within_the_span_of_q():
    bijector = sylvester(DIM, num_vectors=2)
    params = perturbed_params(bijector, jax.random.key(10), 1.0)
    z = jax.random.normal(jax.random.key(11), (DIM,))
    q = orthonormal_columns(params["basis"])
    moved = bijector.forward(params, z)[0] - z
    np.testing.assert_allclose(moved - q @ (q.T @ moved), 0.0, atol=1e-5)
    assert np.linalg.norm(moved) > 0.1


@pytest.mark.parametrize(("permutation", "triangle"), [(None, np.tril), (np.arange(DIM), np.triu)])
def test_triangular_sylvester_has_a_permuted_triangular_jacobian(permutation, triangle):
    bijector = sylvester(DIM, variant="triangular", permutation=permutation)
    params = perturbed_params(bijector, jax.random.key(12), 1.0)
    jacobian = jax.jacfwd(lambda v: bijector.forward(params, v)[0])(jnp.arange(DIM, dtype=jnp.float32))
    np.testing.assert_array_equal(jacobian, triangle(jacobian))
    assert np.abs(jacobian - np.diag(np.diag(jacobian))).max() > 1e-2


@pytest.mark.float64
def test_gradients_through_stacked_numerical_inverses_match_finite_differences():
    """The density direction of 3 Sylvester layers: implicit gradients of 1-D solves chained through two scans."""
    flow = stack(_bijector("sylvester_triangular"), 3)
    params = perturbed_params(flow, jax.random.key(13), 0.5)
    y = jax.random.normal(jax.random.key(14), (DIM,))

    def loss(p):
        x, log_det = flow.inverse(p, y)
        return -0.5 * jnp.sum(x**2) + log_det

    direction = jax.tree.map(lambda leaf: jax.random.normal(jax.random.key(15), leaf.shape), params)
    gradient = jax.jit(jax.grad(loss))(params)
    directional = float(sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction))))
    step = 1e-5
    along = jax.jit(jax.vmap(lambda s: loss(jax.tree.map(lambda p, d: p + s * d, params, direction))))
    forward_value, backward_value = np.asarray(along(jnp.array([step, -step])))
    np.testing.assert_allclose(directional, (forward_value - backward_value) / (2 * step), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: planar(DIM, activation="relu6"), ValueError, "'tanh' or 'leaky_relu'"),
        (lambda: planar(DIM, activation="leaky_relu", negative_slope=1.5), ValueError, r"negative_slope must lie in"),
        (lambda: planar(DIM, negative_slope=0.2), ValueError, r"negative_slope is the leaky ReLU's; tanh takes none"),
        (lambda: planar(0), ValueError, "dim must be a positive int"),
        (lambda: radial(2.5), ValueError, "dim must be a positive int"),
        (lambda: sylvester(DIM, variant="cayley"), ValueError, "variant must be one of"),
        (lambda: sylvester(DIM, num_vectors=DIM + 1), ValueError, r"num_vectors must be an int in \[1, dim=4\]"),
        (lambda: sylvester(DIM, variant="triangular", num_vectors=2), ValueError, "must equal dim=4"),
        (lambda: sylvester(DIM, variant="triangular", permutation=[0, 1, 1, 2]), ValueError, "permutation of range"),
        (lambda: sylvester(DIM, num_householder=2), ValueError, "householder variant only"),
        (lambda: sylvester(DIM, variant="householder", permutation=[3, 2, 1, 0]), ValueError, "triangular variant"),
        (lambda: sylvester(DIM, variant="householder", num_householder=0), ValueError, "num_householder must be"),
    ],
)
def test_bad_configuration_is_rejected(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_and_params_are_rejected(name):
    bijector = _bijector(name)
    params = bijector.init(jax.random.key(16))
    with pytest.raises(ValueError, match=r"expected one event of shape \(4,\)"):
        bijector.forward(params, jnp.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        bijector.inverse(params, jnp.zeros(DIM, jnp.int32))
    with pytest.raises(ValueError, match="expected params with keys"):
        bijector.forward({"w": jnp.zeros(DIM)}, jnp.zeros(DIM))
    key = sorted(params)[0]
    wrong = params | {key: jnp.zeros((7,))}
    with pytest.raises(ValueError, match=rf"params\['{key}'\] should have shape"):
        bijector.inverse(wrong, jnp.zeros(DIM))


@pytest.mark.parametrize("solver", [bisection, solve_monotone])
def test_a_nan_equation_gives_a_nan_root(solver):
    """NaN params make fn NaN; neither end of the bracket moved, and the loop settled on a finite point."""
    assert np.isnan(solver(lambda x: x * jnp.nan, 0.3, -1.0, 1.0))


@pytest.mark.parametrize("solver", [bisection, solve_monotone])
def test_nan_targets_give_nan_roots_and_leave_finite_targets_alone(solver):
    equation = _tanh_equation(1.5, -0.2)
    solve = functools.partial(solver, equation, lower=-5.0, upper=5.0)
    roots = solve(jnp.array([jnp.nan, 0.5, -1.0]))
    assert np.isnan(roots[0])
    np.testing.assert_array_equal(roots[1:], solve(jnp.array([0.5, -1.0])))
    slope = jax.grad(equation)(roots[1])
    np.testing.assert_allclose(jax.grad(solve)(0.5), 1 / slope, rtol=1e-5)


def test_planar_stays_invertible_where_the_gain_softplus_underflows():
    # w . u = -110: softplus(-110) is 0 in float32, which made 1 + gain h' = 0 (log-det -inf) at w . x + b = 0.
    bijector = planar(2)
    params = {"u": jnp.array([-110.0, 0.0]), "w": jnp.array([1.0, 0.0]), "bias": jnp.zeros(())}
    x = jnp.array([0.0, 0.1])
    y, log_det = bijector.forward(params, x)
    x_back, inverse_log_det = bijector.inverse(params, y)
    assert np.isfinite(log_det) and log_det == -inverse_log_det
    np.testing.assert_allclose(x_back, x, atol=1e-6)


@pytest.mark.parametrize("activation", ["leaky_relu", "tanh"])
def test_float32_planar_layers_at_very_negative_w_dot_u_do_not_fold(activation):
    """With 1 + gain floored at eps, the rounded u_hat broke w . u_hat > -1: at w . u = -16, a third of the layers
    folded, round trips missed by 0.9 and log-dets by 3.4 nats (the inverse's by 16)."""
    bijector = planar(3, activation=activation)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 3)).astype(np.float32)
    u = rng.normal(size=(200, 3)).astype(np.float32)
    u = u + ((-16.0 - np.sum(w * u, 1)) / np.sum(w * w, 1))[:, None] * w  # w . u = -16
    x = 0.3 * rng.normal(size=(200, 3)).astype(np.float32)
    x = x - (np.sum(w * x, 1) / np.sum(w * w, 1))[:, None] * w + 0.01 * w  # w . x just above 0, where h' is 1

    @jax.jit
    @jax.vmap
    def round_trip(u, w, x):
        params = {"u": u, "w": w, "bias": jnp.zeros((), jnp.float32)}
        y, log_det = bijector.forward(params, x)
        x_back, inverse_log_det = bijector.inverse(params, y)
        return x_back, log_det, inverse_log_det

    x_back, log_det, inverse_log_det = round_trip(u, w, x)
    assert np.max(np.abs(x_back - x)) < 5e-3
    assert np.max(np.abs(log_det + inverse_log_det)) < 1e-2
