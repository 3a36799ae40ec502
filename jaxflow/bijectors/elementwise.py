"""Element-wise bijectors: fixed maps (exp, softplus, sigmoid, logit, tanh), learnable
shift/scale/affine, and `elementwise`, which lifts a scalar bijector to an event.

Fixed maps take an optional `shape`: when given, inputs are checked against it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import as_shape, check_event, checked_params, refuse_concrete
from jaxflow.bijectors.base import Bijector, invert

_LOG2 = float(np.log(2.0))


def _fixed(name: str, forward_fn: Callable, inverse_fn: Callable, shape=None) -> Bijector:
    """A parameter-free bijector from element-wise `fn(x) -> (y, log_det_elementwise)` kernels."""
    shape = None if shape is None else as_shape(shape)

    def apply(fn, x):
        x = check_event(name, x, shape)
        y, log_det = fn(x)
        return y, jnp.sum(log_det)

    def forward(params, x, context=None):
        del params, context
        return apply(forward_fn, x)

    def inverse(params, y, context=None):
        del params, context
        return apply(inverse_fn, y)

    return Bijector(lambda key: (), forward, inverse, name)


def exp(shape=None) -> Bijector:
    """y = exp(x): maps the real line onto (0, inf)."""
    return _fixed("exp", lambda x: (jnp.exp(x), x), lambda y: (jnp.log(y), -jnp.log(y)), shape)


def softplus(shape=None) -> Bijector:
    """y = log(1 + exp(x)): a smooth map onto (0, inf) that is linear for large x."""

    def forward(x):
        return jax.nn.softplus(x), jax.nn.log_sigmoid(x)

    def inverse(y):
        x = y + jnp.log(-jnp.expm1(-y))
        return x, -jax.nn.log_sigmoid(x)

    return _fixed("softplus", forward, inverse, shape)


def _log_sigmoid_derivative(x):
    return jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)


def sigmoid(shape=None) -> Bijector:
    """y = 1 / (1 + exp(-x)): maps the real line onto (0, 1)."""

    def forward(x):
        return jax.nn.sigmoid(x), _log_sigmoid_derivative(x)

    def inverse(y):
        x = jnp.log(y) - jnp.log1p(-y)
        return x, -(jnp.log(y) + jnp.log1p(-y))

    return _fixed("sigmoid", forward, inverse, shape)


def logit(shape=None) -> Bijector:
    """y = log(x / (1 - x)): maps (0, 1) onto the real line (the inverse of `sigmoid`)."""
    return invert(sigmoid(shape))._replace(name="logit")


def tanh(shape=None) -> Bijector:
    """y = tanh(x): maps the real line onto (-1, 1); log-det computed without cancellation."""

    def forward(x):
        return jnp.tanh(x), 2.0 * (_LOG2 - x - jax.nn.softplus(-2.0 * x))

    def inverse(y):
        return jnp.arctanh(y), -jnp.log1p(-jnp.square(y))

    return _fixed("tanh", forward, inverse, shape)


def affine_with_params(name: str, shape, param_shape, *, shift: bool = True, scale: bool = True) -> Bijector:
    """y = x * exp(log_scale) + shift with params of `param_shape`, broadcast against `shape`.

    The building block of `shift`, `scale`, `affine` and `actnorm`. Params start at
    the identity. Params: {"shift": param_shape, "log_scale": param_shape} (those learnt).
    """
    shape, param_shape = as_shape(shape), as_shape(param_shape)
    fits = len(param_shape) <= len(shape) and all(p in (1, e) for p, e in zip(param_shape[::-1], shape[::-1]))
    if not fits:
        raise ValueError(f"{name}: params of shape {param_shape} do not broadcast to the event shape {shape}.")

    learnt = [key for key, learns in (("shift", shift), ("log_scale", scale)) if learns]

    def init(key):
        del key
        return {key: jnp.zeros(param_shape) for key in learnt}

    def unpack(params, dtype):
        params = checked_params(name, params, dict.fromkeys(learnt, param_shape), dtype)
        zeros = jnp.zeros(param_shape, dtype)
        return params.get("shift", zeros), params.get("log_scale", zeros)

    def forward(params, x, context=None):
        del context
        x = check_event(name, x, shape)
        loc, log_scale = unpack(params, x.dtype)
        log_det = jnp.sum(jnp.broadcast_to(log_scale, shape))
        return x * jnp.exp(log_scale) + loc, log_det

    def inverse(params, y, context=None):
        del context
        y = check_event(name, y, shape)
        loc, log_scale = unpack(params, y.dtype)
        log_det = -jnp.sum(jnp.broadcast_to(log_scale, shape))
        return (y - loc) * jnp.exp(-log_scale), log_det

    return Bijector(init, forward, inverse, name)


def shift(shape) -> Bijector:
    """y = x + shift, a learnable shift per element."""
    return affine_with_params("shift", shape, shape, scale=False)


def scale(shape) -> Bijector:
    """y = x * exp(log_scale), a learnable positive scale per element."""
    return affine_with_params("scale", shape, shape, shift=False)


def affine(shape) -> Bijector:
    """y = x * exp(log_scale) + shift, learnable per element (a diagonal affine map)."""
    return affine_with_params("affine", shape, shape)


def affine_params(loc, scale) -> dict:
    """The params of `affine` that map x to loc + scale * x (a standardiser, a Laplace start).

    Args:
      loc, scale: arrays of the event shape; `scale` finite and positive.
    Returns:
      {"shift": loc, "log_scale": log(scale)}, float arrays of JAX's default float dtype.
    """
    loc, scale = (jnp.asarray(a, jnp.result_type(float)) for a in (loc, scale))
    if loc.shape != scale.shape:
        raise ValueError(f"affine_params: loc and scale need one shape, got {loc.shape} and {scale.shape}.")
    refuse_concrete("affine_params", jnp.all(jnp.isfinite(scale) & (scale > 0)),
                    f"scale must be finite and positive, got {scale}.")
    return {"shift": loc, "log_scale": jnp.log(scale)}


def elementwise(scalar_bijector: Bijector, shape, *, shared_params: bool = True) -> Bijector:
    """Lifts a bijector on scalars (event shape ()) to every element of an event of `shape`.

    Args:
      scalar_bijector: acts on one scalar; its log-det is that scalar's.
      shape: the event shape.
      shared_params: if True, one set of params serves all elements; if False,
        each element gets its own (params gain a leading axis of size prod(shape)).
    """
    shape = as_shape(shape)
    size = int(np.prod(shape))
    name = f"elementwise({scalar_bijector.name})"
    params_axis = None if shared_params else 0

    def init(key):
        if shared_params:
            return scalar_bijector.init(key)
        return jax.vmap(scalar_bijector.init)(jax.random.split(key, size))

    def apply(fn, params, x, context):
        x = check_event(name, x, shape)
        y, log_det = jax.vmap(fn, in_axes=(params_axis, 0, None))(params, x.reshape(size), context)
        return y.reshape(shape), jnp.sum(log_det)

    def forward(params, x, context=None):
        return apply(scalar_bijector.forward, params, x, context)

    def inverse(params, y, context=None):
        return apply(scalar_bijector.inverse, params, y, context)

    return Bijector(init, forward, inverse, name)
