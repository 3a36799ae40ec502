"""Trace-time input checks shared by the leaf bijectors, and the cast of their params to the event's dtype."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ONE_EVENT_ADVICE = "Bijectors act on one event; batch with jax.vmap or use Flow.log_prob/sample."


def check_event(name: str, x, shape: tuple[int, ...] | None, what: str = "input", advice: str = ONE_EVENT_ADVICE):
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
            f"{name}: expected one event of shape {tuple(shape)} as {what}, got shape {tuple(x.shape)}. {advice}"
        )
    return x


def check_data_batch(name: str, y, shape: tuple[int, ...]):
    """`y` as an array after checking it is a float batch (batch, *shape) of at least 2 rows, for data init."""
    y = check_event(name, y, None, what="data batch")
    if y.shape[1:] != tuple(shape):
        raise ValueError(
            f"{name}: expected a data batch of shape (batch, *event_shape) = (batch, {', '.join(map(str, shape))}), "
            f"got shape {y.shape}."
        )
    if y.shape[0] < 2:
        raise ValueError(
            f"{name}: data-dependent init estimates each channel's scale from the batch and needs at least "
            f"2 rows, got shape {y.shape}."
        )
    return y


def check_context(name: str, context, context_shape: tuple[int, ...] | None):
    """Conditional layers need a context of `context_shape`; unconditional ones must not get one."""
    if context_shape is None:
        if context is not None:
            raise ValueError(
                f"{name} is unconditional but got a context of shape {jnp.shape(context)}; "
                "build it with context_dim=... to condition it, or wrap it in jaxflow.ignore_context to keep it "
                "unconditional inside a conditional flow."
            )
        return None
    if context is None:
        raise ValueError(f"{name} is conditional and needs a context of shape {tuple(context_shape)}, got None.")
    return check_event(name, context, context_shape, what="context")


def as_shape(shape) -> tuple[int, ...]:
    """Normalises an int or a sequence of ints to a shape tuple; ValueError for a size that is not whole."""
    sizes = (shape,) if jnp.ndim(shape) == 0 else tuple(shape)
    if any(int(size) != size for size in sizes):  # int() would truncate 4.9 to 4
        raise ValueError(f"expected a shape of whole sizes, got {shape}.")
    return tuple(int(size) for size in sizes)


def batch_shape_of(name: str, shape, event_shape) -> tuple[int, ...]:
    """The leading axes of `shape` in front of `event_shape`; ValueError if the trailing axes differ."""
    shape, event_ndim = tuple(shape), len(event_shape)
    if len(shape) < event_ndim or shape[len(shape) - event_ndim:] != tuple(event_shape):
        raise ValueError(
            f"{name}: expected an array with trailing event shape {tuple(event_shape)} "
            f"(any leading batch shape), got shape {shape}."
        )
    return shape[: len(shape) - event_ndim]


def is_int(value) -> bool:
    """Whether `value` is a Python or NumPy int (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_int_at_least(value, minimum: int) -> bool:
    """Whether `value` is a Python or NumPy int (not a bool) of at least `minimum`."""
    return is_int(value) and value >= minimum


def is_positive_int(value) -> bool:
    """Whether `value` is a Python or NumPy int (not a bool) of at least 1."""
    return is_int_at_least(value, 1)


def check_dim(name: str, dim, minimum: int = 1, why: str = "") -> int:
    """Returns `dim` as an int after checking that it is an int >= `minimum` (`why`: the reason for it)."""
    if not is_int_at_least(dim, minimum):
        what = "a positive int" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: dim must be {what}{why}, got {dim!r}.")
    return int(dim)


def check_hidden(name: str, hidden) -> tuple[int, ...]:
    """Returns the layer widths `hidden` as a tuple after checking that they are a sequence of positive ints."""
    if isinstance(hidden, np.ndarray) and hidden.ndim == 1:
        hidden = hidden.tolist()
    if not isinstance(hidden, Sequence) or not all(is_positive_int(width) for width in hidden):
        raise ValueError(f"{name}: hidden must be a sequence of positive ints (layer widths), got {hidden!r}.")
    return tuple(int(width) for width in hidden)


def check_context_dim(name: str, context_dim) -> int | None:
    """Returns `context_dim` after checking that it is None (unconditional) or a positive int."""
    if context_dim is not None and not is_positive_int(context_dim):
        raise ValueError(f"{name}: context_dim must be None or a positive int, got {context_dim!r}.")
    return context_dim


def check_params(name: str, params, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raises a clear error unless `params` is a dict with exactly `shapes`' keys and shapes."""
    if not isinstance(params, dict) or set(params) != set(shapes):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{name}: expected params with keys {sorted(shapes)}, got {got}; were they made by this bijector's init?"
        )
    for key, shape in shapes.items():
        if tuple(jnp.shape(params[key])) != shape:
            raise ValueError(f"{name}: params[{key!r}] should have shape {shape}, got {tuple(jnp.shape(params[key]))}.")


def refuse_concrete(name: str, ok, message: str) -> None:
    """Raises ValueError(f"{name}: {message}") where `ok` is a concrete False.

    For checks of values that may be traced (params that make a layer non-invertible, a
    temperature under vmap): an eager call says so; a traced `ok` passes, and
    `jaxflow.validation` reports the NaN/inf it leads to.
    """
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise ValueError(f"{name}: {message}")


def cast_params(params, dtype):
    """Every leaf of `params` in `dtype`.

    A bijector computes in its event's dtype, whatever its params': float32 data under
    `jax_enable_x64` (float64 params) stays float32, as a `lax.scan` over layers needs.
    """
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), params)


def checked_params(name: str, params, shapes: dict[str, tuple[int, ...]], dtype) -> dict:
    """`params` after `check_params`, cast to the event's `dtype` (see `cast_params`)."""
    check_params(name, params, shapes)
    return cast_params(params, dtype)


def check_float(x, what: str, hint: str) -> None:
    """Raises TypeError unless `x` is a floating-point array; `hint` says how to fix it."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what}: expected a floating-point array, got dtype {x.dtype}; {hint}.")


def check_finite_rows(x, what: str) -> None:
    """Raises ValueError naming how many rows of `x` (leading axis) hold NaN or inf, and the first."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return
    bad = ~jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
    count = int(bad.sum())
    if count:
        raise ValueError(
            f"{what}: {count} of {x.shape[0]} rows contain NaN or inf (the first is row {int(jnp.argmax(bad))}); "
            "remove or impute them before fitting."
        )
