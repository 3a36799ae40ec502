"""Trace-time input checks shared by the leaf bijectors (shapes are static, so these cost nothing)."""

from __future__ import annotations

import jax.numpy as jnp


def check_event(name: str, x, shape: tuple[int, ...] | None, what: str = "input"):
    """Returns `x` as an array after checking its dtype and, if `shape` is given, its event shape."""
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name}: expected a floating-point {what}, got dtype {x.dtype}; "
            "cast data with .astype(jnp.float32) (dequantise integer data first)."
        )
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"{name}: expected one event of shape {tuple(shape)} as {what}, got shape {tuple(x.shape)}. "
            "Bijectors act on one event; batch with jax.vmap or use Flow.log_prob/sample."
        )
    return x


def check_context(name: str, context, context_shape: tuple[int, ...] | None):
    """Conditional layers need a context of `context_shape`; unconditional ones must not get one."""
    if context_shape is None:
        if context is not None:
            raise ValueError(
                f"{name} is unconditional but got a context of shape {jnp.shape(context)}; "
                "build it with context_dim=... to condition it."
            )
        return None
    if context is None:
        raise ValueError(f"{name} is conditional and needs a context of shape {tuple(context_shape)}, got None.")
    return check_event(name, context, context_shape, what="context")


def as_shape(shape) -> tuple[int, ...]:
    """Normalises an int or a sequence of ints to a shape tuple."""
    return (int(shape),) if jnp.ndim(shape) == 0 else tuple(int(s) for s in shape)


def batch_shape_of(name: str, shape, event_shape) -> tuple[int, ...]:
    """The leading axes of `shape` in front of `event_shape`; ValueError if the trailing axes differ."""
    shape, event_ndim = tuple(shape), len(event_shape)
    if len(shape) < event_ndim or shape[len(shape) - event_ndim:] != tuple(event_shape):
        raise ValueError(
            f"{name}: expected an array with trailing event shape {tuple(event_shape)} "
            f"(any leading batch shape), got shape {shape}."
        )
    return shape[: len(shape) - event_ndim]
