"""Base distributions and `Flow`, a base distribution pushed through a bijector.

A base is a `Distribution(init, log_prob, sample, event_shape)` acting on one event:

    init(key)                -> params
    log_prob(params, x)      -> scalar          x: event_shape
    sample(params, key)      -> x               one event
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow import validation
from jaxflow.bijectors._checks import as_shape, batch_shape_of, check_event, check_params
from jaxflow.bijectors.base import Bijector, transform

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Distribution(NamedTuple):
    """A distribution over events of `event_shape`, as pure functions of its params."""

    init: Callable
    log_prob: Callable
    sample: Callable
    event_shape: tuple[int, ...]
    name: str = "distribution"


def standard_normal(shape) -> Distribution:
    """N(0, I) over events of `shape`; no params."""
    shape = as_shape(shape)

    def log_prob(params, x):
        del params
        x = check_event("standard_normal", x, shape)
        return -0.5 * jnp.sum(jnp.square(x)) - x.size * _HALF_LOG_2PI

    def sample(params, key):
        del params
        return jax.random.normal(key, shape)

    return Distribution(lambda key: (), log_prob, sample, shape, "standard_normal")


def diagonal_normal(shape) -> Distribution:
    """N(loc, diag(exp(log_scale))^2) with learnable loc and log_scale (start: N(0, I))."""
    shape = as_shape(shape)

    def init(key):
        del key
        return {"loc": jnp.zeros(shape), "log_scale": jnp.zeros(shape)}

    def checked(params):  # broadcasting params would count log_scale's entries short in the normaliser
        check_params("diagonal_normal", params, {"loc": shape, "log_scale": shape})
        return params

    def log_prob(params, x):
        x, params = check_event("diagonal_normal", x, shape), checked(params)
        z = (x - params["loc"]) * jnp.exp(-params["log_scale"])
        return -0.5 * jnp.sum(jnp.square(z)) - jnp.sum(params["log_scale"]) - x.size * _HALF_LOG_2PI

    def sample(params, key):
        params = checked(params)
        noise = jax.random.normal(key, shape, params["loc"].dtype)
        return params["loc"] + jnp.exp(params["log_scale"]) * noise

    return Distribution(init, log_prob, sample, shape, "diagonal_normal")


def sample_shape(shape: tuple[int, ...], context_batch, what: str = "Flow.sample: shape") -> tuple[int, ...]:
    """The batch shape of a draw: `shape`, or the batch shape of per-sample contexts."""
    if not context_batch:
        return shape
    if shape in ((), context_batch):
        return context_batch
    raise ValueError(f"{what} {shape} does not match the context batch shape {context_batch}.")


def check_sample_shape(shape, what: str = "Flow.sample: shape") -> tuple[int, ...]:
    """`shape` as a tuple, after checking that it is a non-negative int or a sequence of them (integer arrays too)."""
    if any(isinstance(d, jax.core.Tracer) for d in jax.tree.leaves(shape)):
        raise ValueError(
            f"{what} must be static (Python ints), got a traced value: under jax.jit, mark it static, e.g. "
            "jax.jit(flow.sample, static_argnames='shape')."
        )
    if isinstance(shape, (np.ndarray, jax.Array)) and jnp.issubdtype(shape.dtype, jnp.integer) and shape.ndim <= 1:
        shape = np.asarray(shape).tolist()
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    if not isinstance(dims, (tuple, list)) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise ValueError(f"{what} must be a non-negative int or a tuple of them, got {shape!r}.")
    return tuple(int(d) for d in dims)


class _FlowFields(NamedTuple):
    base: Distribution
    bijector: Bijector
    context_shape: tuple[int, ...] | None = None


class Flow(_FlowFields):
    """A normalising flow: `x = bijector.forward(z)` with `z ~ base`.

    Params are `{"base": ..., "bijector": ...}`. Every method accepts any leading
    batch shape on `x` (or `shape` for sampling). `context` is either one context
    of `context_shape`, shared by the whole batch, or one per sample with the
    batch shape in front.

    Attributes:
      base: the base `Distribution`.
      bijector: the `Bijector` mapping base samples to data.
      context_shape: shape of one context for a conditional flow (an int n reads as
        (n,)), None otherwise.
    """

    __slots__ = ()

    def __new__(cls, base: Distribution, bijector: Bijector, context_shape=None):
        return super().__new__(cls, base, bijector, None if context_shape is None else as_shape(context_shape))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    def init(self, key) -> dict:
        base_key, bijector_key = jax.random.split(key)
        return {"base": self.base.init(base_key), "bijector": self.bijector.init(bijector_key)}

    def log_prob(self, params, x, context=None, *, key=None):
        """log q(x) for x of shape (*batch, *event_shape); one inverse pass."""
        x = check_event("Flow.log_prob", x, None)
        batch_shape = self._batch_shape(x.shape, "x")
        validation.check_finite("Flow.log_prob", "input", x)
        context, context_batch = self._checked_context(context, "Flow.log_prob")

        def one(x, context, key):
            z, log_det = transform(self.bijector, "inverse", params["bijector"], x, context, key)
            validation.check_finite(self.bijector.name, "inverse", z, log_det, inputs=x)
            return self._base_log_prob(params, z) + log_det

        return self._map(one, batch_shape, x, context, context_batch, key)

    def sample(self, params, key, shape=(), context=None):
        """Draws samples of shape (*shape, *event_shape); one forward pass."""
        return self.sample_and_log_prob(params, key, shape, context)[0]

    def sample_and_log_prob(self, params, key, shape=(), context=None):
        """Samples and their log q, from the forward pass alone (no inverse)."""
        context, context_batch = self._checked_context(context, "Flow.sample")
        shape = sample_shape(check_sample_shape(shape), context_batch)
        z, bijector_key = self._base_draws(params, key, shape)

        def one(z, context, key):
            validation.check_finite(f"base {self.base.name}", "sample", z)
            x, log_det = transform(self.bijector, "forward", params["bijector"], z, context, key)
            validation.check_finite(self.bijector.name, "forward", x, log_det, inputs=z)
            return x, self._base_log_prob(params, z) - log_det

        return self._map(one, shape, z, context, context_batch, bijector_key)

    def _base_log_prob(self, params, z):
        log_prob = self.base.log_prob(params["base"], z)
        validation.check_finite(f"base {self.base.name}", "log_prob", log_prob, inputs=z)
        return log_prob

    def _base_draws(self, params, key, shape):
        """Base draws (*shape, *event), and the key left for a stochastic bijector (None for another)."""
        noise_key, bijector_key = jax.random.split(key)
        keys = jax.random.split(noise_key, math.prod(shape))
        z = jax.vmap(self.base.sample, in_axes=(None, 0))(params["base"], keys).reshape(*shape, *self.event_shape)
        return z, bijector_key if self.bijector.stochastic else None

    def _batch_shape(self, shape, what):
        return batch_shape_of(f"Flow ({what})", shape, self.event_shape)

    def _checked_context(self, context, caller: str):
        """The context as an array and its batch shape (() for one shared context; None without one)."""
        if self.context_shape is None:
            if context is not None:
                raise ValueError(f"Flow is unconditional but got a context of shape {jnp.shape(context)}.")
            return None, None
        if context is None:
            raise ValueError(
                f"Flow is conditional: pass a context of shape {self.context_shape} (or with batch dims in front)."
            )
        context = check_event("Flow", context, None, what="context")
        validation.check_finite(caller, "context", context)
        return context, batch_shape_of("Flow (context)", context.shape, self.context_shape)

    def _map(self, one, batch_shape, x, context, context_batch, key):
        """Applies `one(event, context, key)` over the flattened batch and restores its shape."""
        if context_batch and context_batch != batch_shape:
            raise ValueError(
                f"Flow: context batch shape {context_batch} does not match the data batch shape {batch_shape}."
            )
        if self.bijector.stochastic and key is None:
            raise ValueError(f"{self.bijector.name} estimates log-dets stochastically: pass key=... to this call.")
        count = int(np.prod(batch_shape))
        flat_x = x.reshape(count, *self.event_shape)
        keys = None if key is None else jax.random.split(key, count)
        if context_batch:
            context = context.reshape(count, *self.context_shape)
        if validation.is_enabled():
            # Validation is a debug mode that trades speed for checks: checkify cannot check a
            # lax.while_loop (root finding, fixed-point inverses) under vmap, so map events one by one.
            def row(inputs):
                x, row_context, key = inputs
                return one(x, row_context if context_batch else context, key)

            out = jax.lax.map(row, (flat_x, context if context_batch else None, keys))
        else:
            context_axis = 0 if context_batch else None
            out = jax.vmap(one, in_axes=(0, context_axis, None if keys is None else 0))(flat_x, context, keys)
        return jax.tree.map(lambda a: a.reshape(*batch_shape, *a.shape[1:]), out)
