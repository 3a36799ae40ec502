"""Learnable invertible linear maps over the last axis (Glow's 1x1 convolution on images).

Both act on events of shape (..., C) and mix the C channels at every position, so
the log-det is the per-position log|det W| times the number of positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import as_shape, check_event, checked_params, refuse_concrete
from jaxflow.bijectors.base import Bijector


def _positions(shape) -> int:
    return int(np.prod(shape[:-1]))


def _channels_last(name: str, shape) -> tuple[int, ...]:
    """`shape` as a tuple after checking it has a channel axis to mix, (..., C)."""
    shape = as_shape(shape)
    if not shape:
        raise ValueError(f"{name}: mixes the last axis of the event and needs a shape (..., C), got ().")
    return shape


def lu_linear(shape) -> Bijector:
    """y = W x + b over the last axis with W = L U, always invertible.

    L is unit lower-triangular, U upper-triangular with a positive diagonal
    exp(log_diag), so det W > 0 wherever exp(log_diag) is a normal float of the event's
    dtype (|log_diag| below about 87 in float32; an eager call refuses others, while under
    `jit` W rounds to singular there: the inverse returns NaN, which `jaxflow.validation`
    reports, and the forward zeros a channel), and the inverse is two triangular solves.
    Starts at the identity. Without Glow's fixed permutation P in front, W ranges over the
    matrices whose leading principal minors are positive; a `permutation` layer beside it
    reaches the others.

    Params: {"lower": (C, C), "upper": (C, C), "log_diag": (C,), "bias": (C,)}; only
    the strict triangles of "lower" and "upper" are used.

    References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
    """
    shape = _channels_last("lu_linear", shape)
    channels = shape[-1]

    shapes = dict.fromkeys(("lower", "upper"), (channels, channels)) | dict.fromkeys(("log_diag", "bias"), (channels,))

    def init(key):
        del key
        return {name: jnp.zeros(param_shape) for name, param_shape in shapes.items()}

    def factors(params):
        _refuse_unrepresentable(params["log_diag"])
        eye = jnp.eye(channels, dtype=params["log_diag"].dtype)
        lower = jnp.tril(params["lower"], -1) + eye
        upper = jnp.triu(params["upper"], 1) + jnp.diag(jnp.exp(params["log_diag"]))
        return lower, upper

    def forward(params, x, context=None):
        del context
        x = check_event("lu_linear", x, shape)
        params = checked_params("lu_linear", params, shapes, x.dtype)
        lower, upper = factors(params)
        y = x @ (lower @ upper).T + params["bias"]
        return y, _positions(shape) * jnp.sum(params["log_diag"])

    def inverse(params, y, context=None):
        del context
        y = check_event("lu_linear", y, shape)
        params = checked_params("lu_linear", params, shapes, y.dtype)
        lower, upper = factors(params)
        rows = (y - params["bias"]).reshape(-1, channels).T
        z = jax.scipy.linalg.solve_triangular(lower, rows, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(upper, z, lower=False)
        return x.T.reshape(shape), -_positions(shape) * jnp.sum(params["log_diag"])

    return Bijector(init, forward, inverse, "lu_linear")


def _refuse_unrepresentable(log_diag) -> None:
    """Refuses (eagerly) a log-diagonal whose exp underflows to 0 or overflows: W singular or infinite."""
    if isinstance(log_diag, jax.core.Tracer):
        return
    info = jnp.finfo(log_diag.dtype)
    low, high = np.log(info.tiny), np.log(info.max)
    values = np.asarray(log_diag)
    refuse_concrete(
        "lu_linear", np.all((values > low) & (values < high)),
        f"params['log_diag'] must lie in ({low:.1f}, {high:.1f}) for {log_diag.dtype}, where exp of it is a normal "
        f"float (else W is singular or infinite), got values in [{values.min()}, {values.max()}].",
    )


def linear(shape) -> Bijector:
    """y = W x over the last axis with an unconstrained W (Glow's plain 1x1 convolution).

    The log-det is slogdet(W) per position, and the inverse a linear solve. W can
    become singular during training; `lu_linear` cannot. Starts at the identity.

    Params: {"weight": (C, C)}.
    """
    shape = _channels_last("linear", shape)
    channels = shape[-1]

    shapes = {"weight": (channels, channels)}

    def init(key):
        del key
        return {"weight": jnp.eye(channels)}

    def weight_and_log_det(params, dtype):
        weight = checked_params("linear", params, shapes, dtype)["weight"]
        log_abs_det = jnp.linalg.slogdet(weight)[1]
        refuse_concrete("linear", jnp.isfinite(log_abs_det), "the weight is singular or not finite (log |det W| is "
                        "not finite); lu_linear keeps W invertible by construction.")
        return weight, _positions(shape) * log_abs_det

    def forward(params, x, context=None):
        del context
        x = check_event("linear", x, shape)
        weight, log_det = weight_and_log_det(params, x.dtype)
        return x @ weight.T, log_det

    def inverse(params, y, context=None):
        del context
        y = check_event("linear", y, shape)
        weight, log_det = weight_and_log_det(params, y.dtype)
        x = jnp.linalg.solve(weight, y.reshape(-1, channels).T).T
        return x.reshape(shape), -log_det

    return Bijector(init, forward, inverse, "linear")


def fixed_linear(matrix, *, max_condition: float = 1e8) -> Bijector:
    """y = M x with a constant matrix M (e.g. a whitening transform); no params.

    Raises ValueError if M is not square, has non-finite entries, or is singular
    (condition number above `max_condition`).
    """
    matrix_np = np.asarray(matrix, dtype=np.float64)
    if matrix_np.ndim != 2 or matrix_np.shape[0] != matrix_np.shape[1]:
        raise ValueError(f"fixed_linear: expected a square matrix, got shape {matrix_np.shape}.")
    if not np.all(np.isfinite(matrix_np)):
        raise ValueError(f"fixed_linear: the matrix has non-finite entries: {matrix_np.tolist()}.")
    condition = np.linalg.cond(matrix_np)
    if not np.isfinite(condition) or condition > max_condition:
        raise ValueError(
            "fixed_linear: the matrix is singular or nearly so "
            f"(condition number {condition:.3g} > {max_condition:.0e})."
        )
    log_det = float(np.linalg.slogdet(matrix_np)[1])
    inverse_np = np.linalg.inv(matrix_np)
    size = matrix_np.shape[0]

    def apply(m, x, sign):
        x = check_event("fixed_linear", x, (size,))
        return jnp.asarray(m, x.dtype) @ x, jnp.asarray(sign * log_det, x.dtype)

    def forward(params, x, context=None):
        del params, context
        return apply(matrix_np, x, 1.0)

    def inverse(params, y, context=None):
        del params, context
        return apply(inverse_np, y, -1.0)

    return Bijector(lambda key: (), forward, inverse, "fixed_linear")
