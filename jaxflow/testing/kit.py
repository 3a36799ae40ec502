"""`check_bijector`: the contract every jaxflow bijector meets, as one call users can run on theirs."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxflow.bijectors.base import Bijector, transform


def default_tolerance(dtype) -> float:
    """Relative tolerance for `dtype`: loose for float32, tight for float64."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 2e-3


def _close(name, actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if not np.all(np.isfinite(expected)):  # e.g. a singular autodiff Jacobian: nothing to compare with
        raise AssertionError(f"{name}: the reference is not finite (expected={expected}); is the Jacobian singular?")
    error = np.max(np.abs(actual - expected) / (1.0 + np.abs(expected)), initial=0.0)
    if not np.all(np.isfinite(actual)) or error > tol:
        raise AssertionError(
            f"{name}: max relative error {error:.3g} exceeds {tol:.1g}\n  actual={actual}\n  expected={expected}"
        )


def _finite(name, tree):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise AssertionError(f"{name}: non-finite values at {jax.tree_util.keystr(path)}")


def _check_scalar(label, log_det):
    if jnp.shape(log_det) != ():
        raise AssertionError(f"{label}: log_det must be a scalar, got shape {jnp.shape(log_det)}")


def _same_dtype(label, dtype, outputs):
    changed = {name: jnp.result_type(value) for name, value in outputs.items() if jnp.result_type(value) != dtype}
    if changed:
        listed = ", ".join(f"{name} {value_dtype}" for name, value_dtype in changed.items())
        raise AssertionError(f"{label}: outputs must keep the event's dtype {dtype}, got {listed}")


def _jacobian_log_det(fn, x):
    jacobian = jax.jacfwd(lambda flat: fn(flat.reshape(x.shape)).reshape(-1))(x.reshape(-1))
    return jnp.linalg.slogdet(jacobian)[1]


SLOPE_TOLERANCE = 1e-6  # relative, beyond the differences' own error
SETTLED = 1e-3  # the largest relative error of central differences that still judges a gradient
_NUM_STEPS = 11  # central-difference steps 1e-2 * 4**-k, k < 11: down to 1e-8


# Every value the contract compares comes from one compiled program, which takes the
# bijector as a static argument: checking one bijector at many inputs (hypothesis)
# compiles it once, and one program compiles faster than one per check.
@partial(jax.jit, static_argnames=("bijector", "check_jacobian", "check_slopes"))
def _contract_values(bijector, params, x, batch, context, key, check_jacobian, check_slopes):
    def forward(v):
        return transform(bijector, "forward", params, v, context, key)

    def inverse(v):
        return transform(bijector, "inverse", params, v, context, key)

    def loss(direction, p, v):  # a scalar reading every output entry and the log-det
        out, log_det = transform(bijector, direction, p, v, context, key)
        weights = jax.random.normal(jax.random.key(2), out.shape, out.dtype)  # a constant
        return jnp.vdot(weights, out) + jnp.sum(log_det)  # summed: a non-scalar log-det is reported, not raised

    # In float64 the gradients are taken in the event's dtype, which the layers compute in, so
    # that neither float32 params nor their moves in the central differences round the slopes.
    gradient_params = jax.tree.map(lambda a: jnp.asarray(a, x.dtype), params) if check_slopes else params

    def gradients(direction, point):
        return jax.grad(partial(loss, direction), argnums=(0, 1))(gradient_params, point)

    y, log_det = forward(x)
    x_back, inverse_log_det = inverse(y)
    # One event per call, in a loop: forward(inverse(y)), then each row of the batch.
    row_y, row_log_det = jax.lax.map(forward, jnp.concatenate([x_back[None], batch]))
    values = {
        "y": y, "log_det": log_det, "x_back": x_back, "inverse_log_det": inverse_log_det,
        "y_again": row_y[0], "row_y": row_y[1:], "row_log_det": row_log_det[1:],
        "batch": jax.vmap(forward)(batch),
        "gradients": {"forward": gradients("forward", x), "inverse": gradients("inverse", y)},
    }
    if check_jacobian:
        values["forward_reference"] = _jacobian_log_det(lambda v: forward(v)[0], x)
        values["inverse_reference"] = _jacobian_log_det(lambda v: inverse(v)[0], y)
    if check_slopes:
        values["slopes"] = {
            direction: _slopes(partial(loss, direction), values["gradients"][direction], gradient_params, point)
            for direction, point in (("forward", x), ("inverse", y))
        }
    return values


def _slopes(loss, gradients, params, point):
    """`loss`'s derivative along a random unit direction of (params, point), and how well differences know it.

    Returns (slope from `gradients`, slope from central differences, the differences' error):
    differences of steps h and h/4 for h from 1e-2 down to 1e-8, taking the pair that agree
    best (numdifftools' choice of step), so that steep or only piecewise-smooth losses (a
    spline's knots) are judged by the step where the differences have settled.
    """
    flat, unravel = ravel_pytree((params, point))
    draw = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)  # one draw: one PRNG kernel to compile
    direction = unravel(draw / jnp.linalg.norm(draw))
    analytic = jnp.vdot(ravel_pytree(gradients)[0], ravel_pytree(direction)[0])

    def moved_loss(t):
        return loss(*jax.tree.map(lambda a, d: a + t * d, (params, point), direction))

    steps = 1e-2 * 0.25 ** jnp.arange(_NUM_STEPS, dtype=point.dtype)
    losses = jax.vmap(moved_loss)(jnp.concatenate([steps, -steps]))
    differences = (losses[:_NUM_STEPS] - losses[_NUM_STEPS:]) / (2 * steps)
    errors = jnp.abs(jnp.diff(differences))  # D(h) - D(h/4), one per h but the last
    best = jnp.argmin(jnp.where(jnp.isfinite(errors), errors, jnp.inf))
    return analytic, differences[best + 1], errors[best]


def _check_slope(name, analytic, numeric, error):
    """The analytic slope lies within the differences' own error, where the differences have settled.

    Where no two steps agree to `SETTLED` (a loss too steep at every step tried), the
    differences say nothing and the check passes.
    """
    analytic, numeric, error = (float(v) for v in (analytic, numeric, error))
    scale = 1.0 + abs(numeric)
    if error > SETTLED * scale:
        return
    allowed = SLOPE_TOLERANCE * scale + error
    if not abs(analytic - numeric) <= allowed:
        raise AssertionError(
            f"{name}: along a random direction the gradient gives a slope of {analytic:.10g}, central differences "
            f"{numeric:.10g} (error about {error:.2g}); allowed difference {allowed:.3g}"
        )


def check_bijector(
    bijector: Bijector,
    params,
    x,
    context=None,
    *,
    key=None,
    tol: float | None = None,
    log_det_tol: float | None = None,
    check_jacobian: bool = True,
) -> None:
    """Raises AssertionError unless `bijector` meets the jaxflow contract at `x`.

    Checks: forward output and log-det are finite, both log-dets scalars; both directions'
    outputs and log-dets (also under vmap) keep the input's dtype; the round trips
    `inverse(forward(x)) = x` and `forward(inverse(y)) = y`; forward and inverse log-dets
    cancel; both log-dets match `slogdet(jacfwd(...))` (skip with `check_jacobian=False` for
    large events); jit equals eager, and in float64 the eager inverse round-trips as the
    jitted one does; vmap over a batch equals one call per row; gradients with respect to
    params and inputs are finite, and, in float64 for a deterministic bijector, match
    central differences along a random direction (a wrong custom derivative passes every
    other check).

    Args:
      bijector: the bijector under test.
      params: its params (perturb them away from the identity first).
      x: one event in the base domain.
      context: the context, for a conditional bijector.
      key: PRNG key for stochastic bijectors (ignored by the others).
      tol: relative tolerance; defaults to `default_tolerance(x.dtype)`.
      log_det_tol: tolerance of the log-dets against slogdet(jacfwd) alone, for a
        stochastic log-det whose estimate may err by that much; defaults to `tol`. Every
        other comparison (jit and eager, forward and inverse cancelling for one key, vmap
        rows) keeps `tol`: they compare estimates made with the same key.
      check_jacobian: compare log-dets with the autodiff Jacobian.

    Matrix products run at full float precision (`jax.default_matmul_precision("highest")`):
    the checks are about the maths, and a GPU's default TF32 products would blur them.
    """
    with jax.default_matmul_precision("highest"):
        _check(bijector, params, jnp.asarray(x), context, key, tol, log_det_tol, check_jacobian)


def _check(bijector, params, x, context, key, tol, log_det_tol, check_jacobian):
    tol = default_tolerance(x.dtype) if tol is None else tol
    log_det_tol = tol if log_det_tol is None else log_det_tol
    key = jax.random.key(0) if key is None else key
    label = bijector.name

    y, log_det = transform(bijector, "forward", params, x, context, key)  # eager
    _finite(f"{label} forward", (y, log_det))
    _check_scalar(f"{label} forward", log_det)
    _same_dtype(label, x.dtype, {"forward y": y, "forward log_det": log_det})

    batch = jnp.stack([x, 0.5 * x, jnp.roll(x.reshape(-1), 1).reshape(x.shape)])
    # Central differences need float64; a stochastic log-det's gradient is unbiased, not its derivative.
    check_slopes = x.dtype == jnp.float64 and not bijector.stochastic
    values = _contract_values(bijector, params, x, batch, context, key, check_jacobian, check_slopes)
    _same_dtype(label, x.dtype, {
        "inverse x": values["x_back"], "inverse log_det": values["inverse_log_det"],
        "vmap forward y": values["batch"][0], "vmap forward log_det": values["batch"][1],
    })
    _close(f"{label} jit forward == eager", values["y"], y, tol)
    _close(f"{label} jit forward log_det == eager", values["log_det"], log_det, tol)

    inverse_log_det = values["inverse_log_det"]
    _check_scalar(f"{label} inverse", inverse_log_det)
    if x.dtype == jnp.float64:
        # The eager inverse round-trips too. Only in float64: in float32 an expanding inverse
        # amplifies the eager and jitted programs' different rounding past the tolerance.
        x_back, eager_inverse_log_det = transform(bijector, "inverse", params, y, context, key)
        _close(f"{label} eager inverse(forward(x))", x_back, x, tol)
        _close(f"{label} eager inverse log_det = -forward log_det", eager_inverse_log_det, -log_det, tol)
    _close(f"{label} inverse(forward(x))", values["x_back"], x, tol)
    _close(f"{label} inverse log_det = -forward log_det", inverse_log_det, -log_det, tol)
    _close(f"{label} forward(inverse(y))", values["y_again"], y, tol)

    if check_jacobian:
        _close(f"{label} forward log_det vs slogdet(jacfwd)", log_det, values["forward_reference"], log_det_tol)
        _close(f"{label} inverse log_det vs slogdet(jacfwd)", inverse_log_det, values["inverse_reference"], log_det_tol)

    batch_y, batch_log_det = values["batch"]
    for i in range(batch.shape[0]):
        _close(f"{label} vmap forward row {i}", batch_y[i], values["row_y"][i], tol)
        _close(f"{label} vmap forward log_det row {i}", batch_log_det[i], values["row_log_det"][i], tol)

    for direction in ("forward", "inverse"):
        _finite(f"{label} {direction} gradients (params, input)", values["gradients"][direction])
        if check_slopes:
            _check_slope(f"{label} {direction} gradient vs central differences", *values["slopes"][direction])
