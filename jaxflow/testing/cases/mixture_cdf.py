"""Cases for the Flow++ logistic-mixture CDF transformer in a coupling layer (plain and conditional).

Tolerances: the kit's defaults (2e-3 in float32, 1e-9 in float64). Sampling (the
coupling's forward) is a Newton/bisection root find to 4 machine epsilons, so round
trips are limited by the conditioning of the mixture (error ~ eps * |y| / (dy/dx)),
not by the solver. Measured over 20 seeds and input scales 1e-3 to 2.5: <= 5e-5 in
float32 at param scale 0.3 (3e-2 at param scale 1, where flat stretches between
sharp components make x ill-determined by y), <= 2e-11 in float64 at param scales <= 1.
"""

from __future__ import annotations

import functools

import jax

from jaxflow.bijectors.coupling import coupling
from jaxflow.bijectors.mixture_cdf import logistic_mixture_cdf
from jaxflow.testing.cases._registry import normal_input, perturbed_params, register

DIM = 4
CONTEXT_DIM = 2
NUM_COMPONENTS = 3


@functools.cache
def _coupling(conditional: bool):
    context_dim = CONTEXT_DIM if conditional else None
    return coupling(DIM, logistic_mixture_cdf(NUM_COMPONENTS), hidden=(8,), context_dim=context_dim)


def _case(conditional, key, param_scale, input_scale):
    bijector = _coupling(conditional)
    params_key, x_key, context_key = jax.random.split(key, 3)
    context = jax.random.normal(context_key, (CONTEXT_DIM,)) if conditional else None
    params = perturbed_params(bijector, params_key, param_scale)
    return bijector, params, normal_input(x_key, (DIM,), input_scale), context


@register("logistic_mixture_coupling")
def _logistic_mixture_coupling(key, *, param_scale=0.3, input_scale=1.0):
    return _case(False, key, param_scale, input_scale)


@register("logistic_mixture_coupling_conditional")
def _logistic_mixture_coupling_conditional(key, *, param_scale=0.3, input_scale=1.0):
    return _case(True, key, param_scale, input_scale)
