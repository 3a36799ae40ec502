"""The case registry: `name -> case(key, *, param_scale, input_scale) -> (bijector, params, x, context)`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

CASES: dict[str, Callable] = {}
TOLERANCES: dict[str, dict] = {}


def register(name: str, **tolerances) -> Callable:
    """Decorator adding a case; `tolerances` are passed on to `check_bijector` (tol, log_det_tol).

    A tolerance is a number, or a `{dtype name: number}` dict for one that differs by dtype
    (dtypes not named keep the kit's default); `tolerances_for` resolves them.
    """

    def add(case: Callable) -> Callable:
        if name in CASES:
            raise ValueError(f"duplicate case name {name!r}")
        CASES[name] = case
        if tolerances:
            TOLERANCES[name] = tolerances
        return case

    return add


def tolerances_for(name: str, dtype) -> dict:
    """The `check_bijector` tolerances of case `name` for inputs of `dtype`."""
    dtype = jnp.dtype(dtype).name
    resolved = {}
    for key, value in TOLERANCES.get(name, {}).items():
        if not isinstance(value, dict):
            resolved[key] = value
        elif dtype in value:
            resolved[key] = value[dtype]
    return resolved


def perturbed_params(bijector, key, scale: float):
    """`bijector.init` params moved away from the identity by `scale * N(0, 1)` noise per leaf."""
    init_key, noise_key = jax.random.split(key)
    params = bijector.init(init_key)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(noise_key, max(len(leaves), 1))
    noisy = [
        leaf + scale * jax.random.normal(leaf_key, jnp.shape(leaf), jnp.result_type(leaf))
        for leaf, leaf_key in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, noisy)


def normal_input(key, shape, scale: float):
    """`scale * N(0, 1)` of `shape` in the default float dtype."""
    return scale * jax.random.normal(key, shape)


def bijector_case(
    make: Callable, *, shape=(4,), context_dim: int | None = None, input_map: Callable | None = None,
    perturb: Callable = perturbed_params,
) -> Callable:
    """A case for the bijector `make()`.

    Params are `perturb(bijector, key, param_scale)`, the input is normal of `shape` mapped
    into the bijector's domain by `input_map`, and a conditional case (`context_dim`) gets
    a normal context. `make` runs once per case, so compiled checks keyed on the bijector
    are reused across calls.
    """
    make = functools.cache(make)

    def case(key, *, param_scale=0.3, input_scale=1.0):
        bijector = make()
        params_key, x_key, context_key = jax.random.split(key, 3)
        x = normal_input(x_key, shape, input_scale)
        context = None if context_dim is None else normal_input(context_key, (context_dim,), 1.0)
        params = perturb(bijector, params_key, param_scale)
        return bijector, params, x if input_map is None else input_map(x), context

    return case
