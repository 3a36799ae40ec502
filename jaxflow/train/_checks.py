"""Checks of the arrays a fit is given: each raises naming what was expected and what came."""

from __future__ import annotations

import jax.numpy as jnp


def check_float(x, what: str, hint: str) -> None:
    """Raises TypeError unless `x` is a floating-point array; `hint` says how to fix it."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{what}: expected a floating-point array, got dtype {x.dtype}; {hint}.")


def check_finite_rows(x, what: str) -> None:
    """Raises ValueError naming how many rows of `x` (leading axis) hold NaN or inf, and the first."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return
    bad = ~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    count = int(bad.sum())
    if count:
        raise ValueError(
            f"{what}: {count} of {x.shape[0]} rows contain NaN or inf (the first is row {int(jnp.argmax(bad))}); "
            "remove or impute them before fitting."
        )
