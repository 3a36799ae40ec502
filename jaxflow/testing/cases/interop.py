"""Cases for distrax bijectors brought into jaxflow with `from_distrax_bijector`.

Their arrays are fixed configuration, built in the default float dtype of the
running test (one bijector per dtype, so float64 checks keep float64 precision).
"""

from __future__ import annotations

import functools

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.interop import from_distrax_bijector
from jaxflow.testing.cases._registry import normal_input, register

DIM = 4
HIDDEN = 8


def _fixed_weights(*shapes):
    """Reproducible N(0, 0.5^2) arrays for the fixed distrax parameters."""
    rng = np.random.default_rng(0)
    return [0.5 * rng.standard_normal(shape) for shape in shapes]


def _masked_coupling(dtype):
    """A distrax MaskedCoupling with a one-hidden-layer tanh conditioner and a ScalarAffine inner map."""
    weights = _fixed_weights((DIM, HIDDEN), (HIDDEN, DIM), (HIDDEN, DIM))
    w_in, w_shift, w_log_scale = (jnp.asarray(w, dtype) for w in weights)

    def conditioner(masked_x):
        hidden = jnp.tanh(masked_x @ w_in)
        return hidden @ w_shift, jnp.tanh(hidden @ w_log_scale)

    def inner(theta):
        shift, log_scale = theta
        return distrax.ScalarAffine(shift=shift, log_scale=log_scale)

    mask = np.array([True, False, True, False])
    return distrax.MaskedCoupling(mask=mask, conditioner=conditioner, bijector=inner)


def _scalar_affine(dtype):
    """ScalarAffine with per-element shift and scale arrays; one scale is negative (a reflection)."""
    shift = jnp.asarray([0.5, -1.0, 0.0, 2.0], dtype)
    scale = jnp.asarray([1.5, 0.4, -0.8, 2.0], dtype)
    return distrax.ScalarAffine(shift=shift, scale=scale)


def _lifted(make_distrax, shape=(DIM,)):
    """A case wrapping `make_distrax(dtype)` with `from_distrax_bijector` on events of `shape`."""

    @functools.cache  # one bijector per dtype: compiled checks are reused
    def build(dtype):
        return from_distrax_bijector(make_distrax(dtype), shape)

    def case(key, *, param_scale=0.3, input_scale=1.0):
        del param_scale  # wrapped distrax bijectors have no params to perturb
        bijector = build(jnp.dtype(jnp.result_type(float)))
        params_key, x_key = jax.random.split(key)
        return bijector, bijector.init(params_key), normal_input(x_key, shape, input_scale), None

    return case


register("from_distrax_tanh")(_lifted(lambda dtype: distrax.Tanh()))
register("from_distrax_scalar_affine")(_lifted(_scalar_affine))
register("from_distrax_masked_coupling")(_lifted(_masked_coupling))
