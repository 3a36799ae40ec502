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


# The compiled parts take the bijector as a static argument, so checking one bijector at
# many inputs (hypothesis) compiles each of them once.
@functools.partial(jax.jit, static_argnames=("bijector", "direction"))
def _apply(bijector, direction, params, x, context, key):
    return transform(bijector, direction, params, x, context, key)


@functools.partial(jax.jit, static_argnames=("bijector", "direction"))
def _apply_batch(bijector, direction, params, xs, context, key):
    return jax.vmap(lambda x: transform(bijector, direction, params, x, context, key))(xs)


@functools.partial(jax.jit, static_argnames=("bijector", "direction"))
def _jacobian(bijector, direction, params, x, context, key):
    return _jacobian_log_det(lambda v: transform(bijector, direction, params, v, context, key)[0], x)


@functools.partial(jax.jit, static_argnames=("bijector", "direction"))
def _gradients(bijector, direction, params, x, context, key):
    def loss(p, v):
        out, log_det = transform(bijector, direction, p, v, context, key)
        return jnp.sum(jnp.sin(out)) + log_det

    return jax.grad(loss, argnums=(0, 1))(params, x)


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
    (skip with `check_jacobian=False` for large events); jit equals eager; vmap over
    a batch equals one call per row; gradients with respect to params and inputs are
    finite.

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
    args = (context, key)

    y, log_det = transform(bijector, "forward", params, x, context, key)  # eager
    _finite(f"{label} forward", (y, log_det))
    if jnp.shape(log_det) != ():
        raise AssertionError(f"{label}: log_det must be a scalar, got shape {jnp.shape(log_det)}")
    if y.dtype != x.dtype or jnp.result_type(log_det) != x.dtype:
        raise AssertionError(f"{label}: dtypes changed: x {x.dtype} -> y {y.dtype}, log_det {jnp.result_type(log_det)}")

    jit_y, jit_log_det = _apply(bijector, "forward", params, x, *args)
    _close(f"{label} jit forward == eager", jit_y, y, tol)
    _close(f"{label} jit forward log_det == eager", jit_log_det, log_det, log_det_tol)

    x_back, inverse_log_det = _apply(bijector, "inverse", params, y, *args)
    _close(f"{label} inverse(forward(x))", x_back, x, tol)
    _close(f"{label} inverse log_det = -forward log_det", inverse_log_det, -log_det, log_det_tol)
    y_again, _ = _apply(bijector, "forward", params, x_back, *args)
    _close(f"{label} forward(inverse(y))", y_again, y, tol)

    if check_jacobian:
        forward_reference = _jacobian(bijector, "forward", params, x, *args)
        _close(f"{label} forward log_det vs slogdet(jacfwd)", log_det, forward_reference, log_det_tol)
        inverse_reference = _jacobian(bijector, "inverse", params, y, *args)
        _close(f"{label} inverse log_det vs slogdet(jacfwd)", inverse_log_det, inverse_reference, log_det_tol)

    batch = jnp.stack([x, 0.5 * x, jnp.roll(x.reshape(-1), 1).reshape(x.shape)])
    batch_y, batch_log_det = _apply_batch(bijector, "forward", params, batch, *args)
    for i in range(batch.shape[0]):
        row_y, row_log_det = _apply(bijector, "forward", params, batch[i], *args)
        _close(f"{label} vmap forward row {i}", batch_y[i], row_y, tol)
        _close(f"{label} vmap forward log_det row {i}", batch_log_det[i], row_log_det, log_det_tol)

    for direction, point in (("forward", x), ("inverse", y)):
        _finite(f"{label} {direction} gradients (params, input)", _gradients(bijector, direction, params, point, *args))
