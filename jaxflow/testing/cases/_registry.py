"""The case registry: `name -> case(key, *, param_scale, input_scale) -> (bijector, params, x, context)`."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

CASES: dict[str, Callable] = {}
TOLERANCES: dict[str, dict] = {}


def register(name: str, **tolerances) -> Callable:
    """Decorator adding a case; `tolerances` are passed on to `check_bijector` (tol, log_det_tol)."""

    def add(case: Callable) -> Callable:
        if name in CASES:
            raise ValueError(f"duplicate case name {name!r}")
        CASES[name] = case
        if tolerances:
            TOLERANCES[name] = tolerances
        return case

    return add


def perturbed_params(bijector, key, scale: float):
    """`bijector.init` params moved away from the identity by `scale * N(0, 1)` noise per leaf."""
    init_key, noise_key = jax.random.split(key)
    params = bijector.init(init_key)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(noise_key, max(len(leaves), 1))
    noisy = [leaf + scale * jax.random.normal(k, jnp.shape(leaf), jnp.result_type(leaf)) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def normal_input(key, shape, scale: float):
    """`scale * N(0, 1)` of `shape` in the default float dtype."""
    return scale * jax.random.normal(key, shape)
