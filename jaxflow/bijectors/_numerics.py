"""Numerical helpers shared by bijectors."""

import jax
import jax.numpy as jnp


def norm(v) -> jax.Array:
    """|v|_2 of all of v, finite wherever v is (no overflow of the squares), with a zero gradient at v = 0.

    Squaring entries beyond sqrt(max float) (1.8e19 in float32) overflows, so v is scaled by its
    largest entry first (a constant to autodiff: the gradient is v / |v| exactly). It is divided by
    the square root of that entry twice: XLA multiplies by reciprocals, and the reciprocal of an
    entry beyond 8.5e37 is subnormal, which CPUs flush to zero.
    """
    largest = jax.lax.stop_gradient(jnp.max(jnp.abs(v)))
    positive = largest > 0
    root = jnp.sqrt(jnp.where(positive, largest, 1.0))
    squares = jnp.sum(jnp.square(v / root / root))
    return jnp.where(positive, largest * jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
