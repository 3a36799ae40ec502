"""What both adapters check: a PRNG key for stochastic log-dets, and bijectors that keep the event's shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxflow.bijectors.base import Bijector, transform


def check_shape_preserving(adapter: str, bijector: Bijector, params, event_shape: tuple[int, ...], context) -> None:
    """ValueError unless `bijector` maps an event of `event_shape` to one of the same shape (traced, not run)."""
    event = jax.ShapeDtypeStruct(event_shape, jnp.float32)
    forward = lambda p, x, c: transform(bijector, "forward", p, x, c, jax.random.key(0))  # noqa: E731
    out = jax.eval_shape(forward, params, event, context)[0]
    if out.shape != event_shape:
        raise ValueError(
            f"{adapter}: {bijector.name} maps events of shape {event_shape} to shape {out.shape}; the adapter "
            "needs a bijector that keeps the event's shape (leave shape-changing layers such as squeeze out of it)."
        )


def check_key(bijector: Bijector, key, wrapper: str, library: str) -> None:
    """A stochastic bijector's log-dets need the key given to `wrapper`: the `library`'s methods take none."""
    if bijector.stochastic and key is None:
        raise ValueError(
            f"{bijector.name} estimates log-dets stochastically: pass key=... to {wrapper} "
            f"({library}'s methods take no key)."
        )
