"""Unnormalised log-targets, functions of one event, evaluated over batches with their shapes checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_target_values(log_target, x, event_shape):
    """log_target over every event of x (*batch, *event_shape) -> (*batch)."""
    batch_shape = x.shape[: x.ndim - len(event_shape)]
    values = jax.vmap(log_target)(x.reshape(-1, *event_shape))
    if values.ndim != 1:
        raise ValueError(
            f"log_target must map one event of shape {event_shape} to a scalar, got shape {values.shape[1:]}."
        )
    return values.reshape(batch_shape)


def check_log_target(log_target, event_shape) -> None:
    """TypeError/ValueError unless `log_target` maps one event of `event_shape` to a scalar (traced, not run)."""
    if not callable(log_target):
        raise TypeError(f"log_target must be a function of one event, got {type(log_target).__name__}.")
    example = jax.ShapeDtypeStruct((1, *event_shape), jnp.float32)
    jax.eval_shape(lambda x: log_target_values(log_target, x, event_shape), example)
