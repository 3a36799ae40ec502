"""Shared pieces of the ready-made builders: stacking one layer type with per-layer permutations."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxflow.bijectors.base import Bijector, chain, stack
from jaxflow.bijectors.permutation import inverse_permutations, permutation, random_permutations, reverse
from jaxflow.distributions import Flow, standard_normal


def permuted_stack(
    make_layer: Callable[[], Bijector], dim: int, num_layers: int, *, permute: str, seed: int, unroll: int | bool = 1
) -> Bijector:
    """`num_layers` copies of `make_layer()`, each followed by a reordering, in one `lax.scan`.

    Args:
      permute: "random" (an independent random permutation per layer, scanned as
        constants), "reverse" (flip, the same every layer) or "none".
      seed: seed of the random permutations (configuration, not params).
      unroll: layers per loop iteration (see `stack`).
    """
    if permute == "random":
        perms = np.asarray(random_permutations(jax.random.key(seed), num_layers, dim), np.int32)

        def permuted_layer(orders):
            perm, inverse_perm = orders
            return chain(make_layer(), permutation(perm, inverse_perm=inverse_perm))

        return stack(permuted_layer, num_layers, constants=(perms, inverse_permutations(perms)), unroll=unroll)
    if permute == "reverse":
        return stack(chain(make_layer(), reverse()), num_layers, unroll=unroll)
    if permute == "none":
        return stack(make_layer(), num_layers, unroll=unroll)
    raise ValueError(f"permute must be 'random', 'reverse' or 'none', got {permute!r}.")


def vector_flow(bijector: Bijector, dim: int, context_dim: int | None) -> Flow:
    """A standard-normal-based flow on vectors of size `dim`."""
    return Flow(standard_normal(dim), bijector, None if context_dim is None else (context_dim,))
