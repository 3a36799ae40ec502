"""Adapters between jaxflow and distrax, in both directions.

    to_distrax_bijector(bijector, params, event_shape=...)  -> distrax.Bijector
    to_distrax_distribution(flow, params)                    -> distrax.Distribution
    from_distrax_bijector(distrax_bijector, event_shape)     -> jaxflow Bijector (no params)
    from_distrax_distribution(dist)                          -> jaxflow Distribution (no params)

jaxflow acts on one event per call and distrax broadcasts over leading batch
axes, so the adapters to distrax flatten the batch, `vmap` over it and restore
its shape; the adapters from distrax sum log-dets and log-probs over every
axis that jaxflow counts as part of the event.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import as_shape, batch_shape_of, check_event
from jaxflow.bijectors.base import Bijector, transform
from jaxflow.distributions import Distribution, Flow
from jaxflow.interop._common import check_key, check_shape_preserving


class _BijectorAsDistrax(distrax.Bijector):
    """A jaxflow bijector with fixed params, seen as a distrax bijector over batched events."""

    def __init__(self, bijector: Bijector, params, event_shape, context, key):
        super().__init__(event_ndims_in=len(event_shape))
        self._bijector = bijector
        self._params = params
        self._event_shape = event_shape
        self._context = context
        self._key = key

    @property
    def name(self) -> str:
        return f"jaxflow({self._bijector.name})"

    def forward_and_log_det(self, x):
        return self._apply("forward", x)

    def inverse_and_log_det(self, y):
        return self._apply("inverse", y)

    def _apply(self, direction, x):
        x = check_event(self.name, x, None)
        check_key(self._bijector, self._key, "to_distrax_bijector", "distrax")
        batch_shape = batch_shape_of(self.name, x.shape, self._event_shape)
        count = int(np.prod(batch_shape))
        keys = None if self._key is None else jax.random.split(self._key, count)

        def one(event, key):
            return transform(self._bijector, direction, self._params, event, self._context, key)

        flat = x.reshape(count, *self._event_shape)
        y, log_det = jax.vmap(one, in_axes=(0, None if keys is None else 0))(flat, keys)
        return y.reshape(*batch_shape, *y.shape[1:]), log_det.reshape(batch_shape)


def to_distrax_bijector(bijector: Bijector, params, *, event_shape, context=None, key=None) -> distrax.Bijector:
    """Wraps a jaxflow bijector and its params as a `distrax.Bijector`.

    The result has `event_ndims_in = event_ndims_out = len(event_shape)` and accepts
    inputs of shape (*batch, *event_shape), returning log-dets of shape `batch`, so it
    plugs into `distrax.Transformed`, `distrax.Chain` or `distrax.Inverse`. It is a
    pytree (distrax bijectors are), so `params` can be traced through `jax.jit` or
    differentiated with `jax.grad`.

    Args:
      bijector: a jaxflow bijector acting on one event of `event_shape`.
      params: its params.
      event_shape: shape of one event.
      context: one context, shared by every event, for a conditional bijector.
      key: PRNG key for a stochastic bijector; split into one key per event.

    Returns:
      A `distrax.Bijector` computing `bijector.forward` / `.inverse` event by event.
    """
    event_shape = as_shape(event_shape)
    check_shape_preserving("to_distrax_bijector", bijector, params, event_shape, context)
    return _BijectorAsDistrax(bijector, params, event_shape, context, key)


class _FlowAsDistrax(distrax.Distribution):
    """A jaxflow `Flow` with fixed params, seen as a distrax distribution."""

    def __init__(self, flow: Flow, params, context, key):
        super().__init__()
        self._flow = flow
        self._params = params
        self._context = context
        self._key = key

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._flow.event_shape

    def log_prob(self, value):
        check_key(self._flow.bijector, self._key, "to_distrax_distribution", "distrax")
        return self._flow.log_prob(self._params, value, self._context, key=self._key)

    def _sample_n(self, key, n):
        return self._sample_n_and_log_prob(key, n)[0]

    def _sample_n_and_log_prob(self, key, n):
        return self._flow.sample_and_log_prob(self._params, key, (n,), self._context)


def to_distrax_distribution(flow: Flow, params, *, context=None, key=None) -> distrax.Distribution:
    """Wraps a jaxflow `Flow` and its params as a `distrax.Distribution`.

    `sample(seed=..., sample_shape=...)` and `sample_and_log_prob` run the flow's
    forward pass once (`Flow.sample_and_log_prob`); `log_prob` runs its inverse pass
    on values of shape (*batch, *event_shape).

    Args:
      flow: the jaxflow flow.
      params: its params, as made by `flow.init`.
      context: one context, shared by every sample, for a conditional flow.
      key: PRNG key that `log_prob` hands to a stochastic bijector (distrax's
        `log_prob` takes none).

    Returns:
      A `distrax.Distribution` with the flow's `event_shape` and empty batch shape.
    """
    context_batch = flow._checked_context(context, "to_distrax_distribution")[1]
    if context_batch:
        raise ValueError(
            f"to_distrax_distribution: pass one context of shape {flow.context_shape}, shared by every sample, got "
            f"a batch of them, shape {jnp.shape(context)} (distrax draws one batch shape for all of them)."
        )
    return _FlowAsDistrax(flow, params, context, key)


def from_distrax_bijector(distrax_bijector: distrax.Bijector, event_shape) -> Bijector:
    """Wraps a fixed distrax bijector as a jaxflow bijector on one event of `event_shape`.

    The result has no params (`init` returns `()`): the distrax bijector's arrays are
    configuration. A distrax bijector acting on fewer axes than the event (an
    element-wise `distrax.Tanh` has `event_ndims_in = 0`) is applied to the whole
    event, and its log-dets are summed over the extra axes. Outputs and log-dets
    take the input's dtype, as the jaxflow protocol asks.

    Args:
      distrax_bijector: a `distrax.Bijector` with `event_ndims_in == event_ndims_out`.
      event_shape: shape of one event.

    Returns:
      A jaxflow `Bijector`.
    """
    event_shape = as_shape(event_shape)
    name = f"distrax({distrax_bijector.name})"
    event_ndims = distrax_bijector.event_ndims_in
    if distrax_bijector.event_ndims_out != event_ndims:
        raise ValueError(
            f"from_distrax_bijector: {name} maps {event_ndims}-d events to {distrax_bijector.event_ndims_out}-d "
            "events; only bijectors keeping the number of event axes are supported."
        )
    if event_ndims > len(event_shape):
        raise ValueError(
            f"from_distrax_bijector: {name} acts on {event_ndims}-d events, but event_shape is {event_shape}."
        )
    summed_shape = event_shape[: len(event_shape) - event_ndims]  # axes distrax treats as batch

    def apply(fn, x):
        x = check_event(name, x, event_shape)
        y, log_det = fn(x)
        if tuple(y.shape) != event_shape:
            raise ValueError(
                f"{name} mapped an event of shape {event_shape} to shape {tuple(y.shape)}; "
                "its parameters must broadcast against one event."
            )
        return y.astype(x.dtype), jnp.sum(jnp.broadcast_to(log_det, summed_shape)).astype(x.dtype)

    def forward(params, x, context=None):
        del params, context
        return apply(distrax_bijector.forward_and_log_det, x)

    def inverse(params, y, context=None):
        del params, context
        return apply(distrax_bijector.inverse_and_log_det, y)

    return Bijector(lambda key: (), forward, inverse, name)


def from_distrax_distribution(dist: distrax.Distribution) -> Distribution:
    """Wraps a fixed distrax distribution as a jaxflow base `Distribution` (no params).

    One jaxflow event is one draw of `dist`: its event shape is
    `dist.batch_shape + dist.event_shape`, and `log_prob` sums over the batch axes
    (as `distrax.Independent` would), so `distrax.Normal(jnp.zeros(4), 1.0)` and
    `distrax.MultivariateNormalDiag(jnp.zeros(4))` give the same base.

    Args:
      dist: a distrax distribution over array (not nested) events.

    Returns:
      A jaxflow `Distribution` usable as the base of a `Flow`.
    """
    name = f"distrax({dist.name})"
    if not (isinstance(dist.event_shape, tuple) and all(isinstance(n, int) for n in dist.event_shape)):
        raise TypeError(
            f"from_distrax_distribution: {name} has nested events {dist.event_shape}; expected array events."
        )
    batch_shape = tuple(dist.batch_shape)
    event_shape = batch_shape + tuple(dist.event_shape)

    def log_prob(params, x):
        del params
        x = check_event(name, x, event_shape)
        return jnp.sum(dist.log_prob(x))

    def sample(params, key):
        del params
        return dist.sample(seed=key)

    return Distribution(lambda key: (), log_prob, sample, event_shape, name)
