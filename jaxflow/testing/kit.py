"""`check_bijector`: the contract every jaxflow bijector meets, as one call users can run on theirs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors.base import Bijector, transform


def default_tolerance(dtype) -> float:
    """Relative tolerance for `dtype`: loose for float32, tight for float64."""
    return 1e-9 if jnp.dtype(dtype) == jnp.float64 else 2e-3


def _close(name, actual, expected, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    error = np.max(np.abs(actual - expected) / (1.0 + np.abs(expected)), initial=0.0)
    if not np.all(np.isfinite(actual)) or error > tol:
        raise AssertionError(
            f"{name}: max relative error {error:.3g} exceeds {tol:.1g}\n  actual={actual}\n  expected={expected}"
        )


def _finite(name, tree):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise AssertionError(f"{name}: non-finite values at {jax.tree_util.keystr(path)}")


def _jacobian_log_det(fn, x):
    jacobian = jax.jacfwd(lambda flat: fn(flat.reshape(x.shape)).reshape(-1))(x.reshape(-1))
    return jnp.linalg.slogdet(jacobian)[1]


# Every value the contract compares comes from one compiled program, which takes the
# bijector as a static argument: checking one bijector at many inputs (hypothesis)
# compiles it once, and one program compiles faster than one per check.
@functools.partial(jax.jit, static_argnames=("bijector", "check_jacobian"))
def _contract_values(bijector, params, x, batch, context, key, check_jacobian):
    def forward(v):
        return transform(bijector, "forward", params, v, context, key)

    def inverse(v):
        return transform(bijector, "inverse", params, v, context, key)

    def gradients(direction, point):
        def loss(p, v):
            out, log_det = transform(bijector, direction, p, v, context, key)
            return jnp.sum(jnp.sin(out)) + log_det

        return jax.grad(loss, argnums=(0, 1))(params, point)

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
    return values


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

    Checks: forward output and log-det are finite, of the input's dtype, the log-det a
    scalar; the round trips `inverse(forward(x)) = x` and `forward(inverse(y)) = y`;
    forward and inverse log-dets cancel; both log-dets match `slogdet(jacfwd(...))`
    (skip with `check_jacobian=False` for large events); jit equals eager, and in float64
    the eager inverse round-trips as the jitted one does; vmap over a batch equals one
    call per row; gradients with respect to params and inputs are finite.

    Args:
      bijector: the bijector under test.
      params: its params (perturb them away from the identity first).
      x: one event in the base domain.
      context: the context, for a conditional bijector.
      key: PRNG key for stochastic bijectors (ignored by the others).
      tol: relative tolerance; defaults to `default_tolerance(x.dtype)`.
      log_det_tol: tolerance for log-det comparisons (iterative or stochastic
        log-dets); defaults to `tol`.
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
    if jnp.shape(log_det) != ():
        raise AssertionError(f"{label}: log_det must be a scalar, got shape {jnp.shape(log_det)}")
    if y.dtype != x.dtype or jnp.result_type(log_det) != x.dtype:
        raise AssertionError(f"{label}: dtypes changed: x {x.dtype} -> y {y.dtype}, log_det {jnp.result_type(log_det)}")

    batch = jnp.stack([x, 0.5 * x, jnp.roll(x.reshape(-1), 1).reshape(x.shape)])
    values = _contract_values(bijector, params, x, batch, context, key, check_jacobian)
    _close(f"{label} jit forward == eager", values["y"], y, tol)
    _close(f"{label} jit forward log_det == eager", values["log_det"], log_det, log_det_tol)

    inverse_log_det = values["inverse_log_det"]
    if x.dtype == jnp.float64:
        # The eager inverse round-trips too. Only in float64: in float32 an expanding inverse
        # amplifies the eager and jitted programs' different rounding past the tolerance.
        x_back, eager_inverse_log_det = transform(bijector, "inverse", params, y, context, key)
        _close(f"{label} eager inverse(forward(x))", x_back, x, tol)
        _close(f"{label} eager inverse log_det = -forward log_det", eager_inverse_log_det, -log_det, log_det_tol)
    _close(f"{label} inverse(forward(x))", values["x_back"], x, tol)
    _close(f"{label} inverse log_det = -forward log_det", inverse_log_det, -log_det, log_det_tol)
    _close(f"{label} forward(inverse(y))", values["y_again"], y, tol)

    if check_jacobian:
        _close(f"{label} forward log_det vs slogdet(jacfwd)", log_det, values["forward_reference"], log_det_tol)
        _close(f"{label} inverse log_det vs slogdet(jacfwd)", inverse_log_det, values["inverse_reference"], log_det_tol)

    batch_y, batch_log_det = values["batch"]
    for i in range(batch.shape[0]):
        _close(f"{label} vmap forward row {i}", batch_y[i], values["row_y"][i], tol)
        _close(f"{label} vmap forward log_det row {i}", batch_log_det[i], values["row_log_det"][i], log_det_tol)

    for direction in ("forward", "inverse"):
        _finite(f"{label} {direction} gradients (params, input)", values["gradients"][direction])
