"""Shared pieces of the ready-made builders: stacking one layer type with per-layer permutations."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxflow.bijectors._checks import is_int, is_positive_int
from jaxflow.bijectors.actnorm import actnorm as actnorm_layer
from jaxflow.bijectors.base import Bijector, chain, stack
from jaxflow.bijectors.permutation import inverse_permutations, permutation, random_permutations, reverse
from jaxflow.distributions import Flow, standard_normal


def check_layers(num_layers) -> int:
    """A builder's `layers=`, checked to be an integer >= 1 (the error names the builder's option, not stack's)."""
    if not is_positive_int(num_layers):
        raise ValueError(f"layers must be an integer >= 1, got {num_layers!r}.")
    return num_layers


def with_actnorm(layer: Bijector, dim: int) -> Bijector:
    """`layer` with an ActNorm before it on the data -> base side (after it in `forward`)."""
    return chain(layer, actnorm_layer(dim), name=f"actnorm_{layer.name}")


def permuted_stack(
    make_layer: Callable[[], Bijector], dim: int, num_layers: int, *, permute: str, seed: int, unroll: int | bool = 1,
    transformed: np.ndarray | None = None, actnorm: bool = False,
) -> Bijector:
    """`num_layers` copies of `make_layer()`, each followed by a reordering, in one `lax.scan`.

    Args:
      permute: "random" (an independent random permutation per layer, scanned as
        constants), "reverse" (flip, the same every layer) or "none".
      seed: seed of the random permutations (configuration, not params); an int, unused by
        "reverse" and "none".
      unroll: layers per loop iteration (see `stack`).
      transformed: bool (dim,), the positions a layer changes (a coupling's non-identity
        half); None when it changes all of them. Then the reorderings must bring every
        entry into those positions at some layer: random permutations that leave one
        out are repaired (e.g. two identity permutations of dim 2, 1 seed in 2), and "none"
        is refused for more than one layer.
      actnorm: put an ActNorm before every layer (data -> base; see `with_actnorm`).
    """
    check_layers(num_layers)  # before the permutations are drawn for it
    if not is_int(seed):
        raise ValueError(f"seed must be an int (it draws the random permutations), got {seed!r}.")
    if not isinstance(actnorm, bool):
        raise ValueError(f"actnorm must be True or False, got {actnorm!r}.")
    if actnorm:
        make_plain_layer = make_layer
        make_layer = lambda: with_actnorm(make_plain_layer(), dim)  # noqa: E731
    if permute == "random":
        perms = _covering_permutations(jax.random.key(seed), num_layers, dim, transformed)

        def permuted_layer(orders):
            perm, inverse_perm = orders
            return chain(make_layer(), permutation(perm, inverse_perm=inverse_perm))

        return stack(permuted_layer, num_layers, constants=(perms, inverse_permutations(perms)), unroll=unroll)
    if permute == "reverse":
        return stack(chain(make_layer(), reverse()), num_layers, unroll=unroll)
    if permute == "none":
        if transformed is not None and num_layers > 1 and not transformed.all():
            raise ValueError(
                f"permute='none': without reordering, the entries at positions {np.flatnonzero(~transformed).tolist()} "
                "pass every coupling layer unchanged; use permute='random' or 'reverse'."
            )
        return stack(make_layer(), num_layers, unroll=unroll)
    raise ValueError(f"permute must be 'random', 'reverse' or 'none', got {permute!r}.")


def _covering_permutations(key, num_layers: int, dim: int, transformed) -> np.ndarray:
    """Random permutations (num_layers, dim) under which some layer transforms every entry.

    A draw that covers is kept (so most seeds keep their permutations); otherwise the first
    permutation is rearranged to send every position the first layer leaves unchanged into
    a transformed one, so the second layer changes what the first did not.
    """
    perms = np.array(random_permutations(key, num_layers, dim), np.int32)  # a writable copy
    if transformed is None or num_layers == 1 or not untransformed_entries(perms, transformed).size:
        return perms
    passed = ~transformed[perms[0]]  # drawn values (positions of the layer's output) left unchanged
    order = np.concatenate([perms[0][passed], perms[0][~passed]])  # those first, else in drawn order
    slots = np.concatenate([np.flatnonzero(transformed), np.flatnonzero(~transformed)])  # transformed slots first
    perms[0][slots] = order
    return perms


def untransformed_entries(perms: np.ndarray, transformed: np.ndarray) -> np.ndarray:
    """Indices of the entries of a stack's input that no layer transforms.

    Layer k changes the positions where `transformed` is True, then reorders with
    `perms[k]` (y[i] = x[perms[k][i]]).
    """
    position = np.arange(transformed.size)  # where each input entry sits before the current layer
    covered = np.zeros(transformed.size, bool)
    for perm in perms:
        covered |= transformed[position]
        position = np.argsort(perm)[position]
    return np.flatnonzero(~covered)


def vector_flow(bijector: Bijector, dim: int, context_dim: int | None) -> Flow:
    """A standard-normal-based flow on vectors of size `dim`."""
    return Flow(standard_normal(dim), bijector, None if context_dim is None else (context_dim,))
