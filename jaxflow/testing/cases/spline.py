"""Cases for the rational-quadratic spline: in a coupling layer (plain and conditional) and standalone.

The bound is small (2.0) so that normal inputs land both on the spline and on its identity tails.
"""

from __future__ import annotations

import functools

import jax

from jaxflow.bijectors.coupling import coupling
from jaxflow.bijectors.spline import rational_quadratic_spline, spline_bijector
from jaxflow.testing.cases._registry import normal_input, perturbed_params, register

DIM = 4
CONTEXT_DIM = 2
SPLINE = dict(num_bins=5, bound=2.0)


@functools.cache
def _coupling(conditional: bool):
    context_dim = CONTEXT_DIM if conditional else None
    return coupling(DIM, rational_quadratic_spline(**SPLINE), hidden=(8,), context_dim=context_dim)


@functools.cache
def _elementwise():
    return spline_bijector((DIM,), **SPLINE)


def _case(bijector, key, param_scale, input_scale, context_dim=None):
    params_key, x_key, context_key = jax.random.split(key, 3)
    params = perturbed_params(bijector, params_key, param_scale)
    context = None if context_dim is None else jax.random.normal(context_key, (context_dim,))
    return bijector, params, normal_input(x_key, (DIM,), input_scale), context


@register("rq_spline_coupling")
def _rq_spline_coupling(key, *, param_scale=0.3, input_scale=1.0):
    return _case(_coupling(False), key, param_scale, input_scale)


@register("rq_spline_coupling_conditional")
def _rq_spline_coupling_conditional(key, *, param_scale=0.3, input_scale=1.0):
    return _case(_coupling(True), key, param_scale, input_scale, CONTEXT_DIM)


@register("rq_spline_elementwise")
def _rq_spline_elementwise(key, *, param_scale=0.3, input_scale=1.0):
    return _case(_elementwise(), key, param_scale, input_scale)
