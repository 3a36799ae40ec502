"""Parameter-free reorderings of the last axis: fixed permutations and reversal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import check_event
from jaxflow.bijectors.base import Bijector


def permutation(perm, *, inverse_perm=None, axis: int = -1) -> Bijector:
    """y[..., i] = x[..., perm[i]] along `axis` (default the last); log-det 0.

    `perm` is configuration: an int array, concrete or (inside `stack` with
    `constants=`) a traced per-layer slice. For a traced `perm`, pass its
    `inverse_perm` (see `inverse_permutations`) as a constant too; otherwise every
    layer sorts `perm` at run time to invert it.
    """
    traced = isinstance(perm, jax.core.Tracer)
    perm = perm if traced else np.asarray(perm)
    if not jnp.issubdtype(perm.dtype, jnp.integer) or perm.ndim != 1:
        raise TypeError(f"permutation: expected a 1-D integer array, got dtype {perm.dtype} and shape {perm.shape}.")
    if not traced:
        if not np.array_equal(np.sort(perm), np.arange(perm.size)):
            raise ValueError(f"permutation: {perm.tolist()} is not a permutation of 0..{perm.size - 1}.")
        perm = perm.astype(np.int32)  # numpy constants: independent of the jax_enable_x64 mode
    if inverse_perm is None:
        inverse_perm = jnp.argsort(perm) if traced else np.argsort(perm).astype(np.int32)
    elif jnp.shape(inverse_perm) != perm.shape:
        raise ValueError(f"permutation: inverse_perm has shape {jnp.shape(inverse_perm)}, expected {perm.shape}.")
    elif not (traced or isinstance(inverse_perm, jax.core.Tracer)):
        inverse_perm = np.asarray(inverse_perm).astype(np.int32)
        if not np.array_equal(perm[inverse_perm], np.arange(perm.size)):
            raise ValueError(f"permutation: inverse_perm {inverse_perm.tolist()} does not invert {perm.tolist()}.")
    size = perm.shape[0]

    def apply(order, x):
        x = check_event("permutation", x, None)
        if x.ndim == 0 or x.shape[axis] != size:
            raise ValueError(
                f"permutation: expected an event with {size} entries along axis {axis}, got shape {x.shape}."
            )
        # The indices are a permutation: unique (so the gradient, a scatter, needs no atomics) and
        # in bounds (so "clip" never moves one, and no fill mask is needed).
        return jnp.take(x, order, axis=axis, mode="clip", unique_indices=True), jnp.zeros((), x.dtype)

    def forward(params, x, context=None):
        del params, context
        return apply(perm, x)

    def inverse(params, y, context=None):
        del params, context
        return apply(inverse_perm, y)

    return Bijector(lambda key: (), forward, inverse, "permutation")


def random_permutations(key, num_layers: int, size: int) -> jax.Array:
    """Independent random permutations, shape (num_layers, size): constants for `stack`."""
    return jax.vmap(lambda k: jax.random.permutation(k, size))(jax.random.split(key, num_layers))


def inverse_permutations(perms) -> np.ndarray:
    """The inverse of each row of `perms` (num_layers, size), as int32 constants for `stack`."""
    return np.argsort(np.asarray(perms), axis=-1).astype(np.int32)


def reverse(*, axis: int = -1) -> Bijector:
    """Reverses the order along `axis` (default the last); its own inverse; log-det 0."""

    def flip(params, x, context=None):
        del params, context
        x = check_event("reverse", x, None)
        return jnp.flip(x, axis=axis), jnp.zeros((), x.dtype)

    return Bijector(lambda key: (), flip, flip, "reverse")
