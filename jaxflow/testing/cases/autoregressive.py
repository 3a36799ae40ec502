"""Cases for the masked (MAF) and inverse (IAF) autoregressive layers."""

from __future__ import annotations

import functools

import jax

from jaxflow.bijectors import transformers
from jaxflow.bijectors.autoregressive import inverse_autoregressive, masked_autoregressive
from jaxflow.bijectors.spline import rational_quadratic_spline
from jaxflow.testing.cases._registry import normal_input, perturbed_params, register

DIM = 4
CONTEXT_DIM = 2
HIDDEN = (8,)


def _case(make, context_dim=None):
    """A case for `make()` with perturbed params, a normal input and, if conditional, a normal context."""

    make = functools.cache(make)  # one bijector object per case: compiled checks are reused

    def case(key, *, param_scale=0.3, input_scale=1.0):
        bijector = make()
        params_key, x_key, context_key = jax.random.split(key, 3)
        params = perturbed_params(bijector, params_key, param_scale)
        context = None if context_dim is None else normal_input(context_key, (context_dim,), 1.0)
        return bijector, params, normal_input(x_key, (DIM,), input_scale), context

    return case


register("maf_affine")(_case(lambda: masked_autoregressive(DIM, transformers.affine(), hidden=HIDDEN)))
register("maf_affine_conditional")(
    _case(
        lambda: masked_autoregressive(DIM, transformers.affine(), hidden=HIDDEN, context_dim=CONTEXT_DIM),
        context_dim=CONTEXT_DIM,
    )
)
register("maf_affine_custom_order")(
    _case(lambda: masked_autoregressive(DIM, transformers.affine(), hidden=HIDDEN, order=[2, 0, 3, 1]))
)
register("maf_additive")(_case(lambda: masked_autoregressive(DIM, transformers.additive(), hidden=HIDDEN)))
register("iaf_affine")(_case(lambda: inverse_autoregressive(DIM, transformers.affine(), hidden=HIDDEN)))
register("rq_spline_autoregressive")(
    _case(lambda: masked_autoregressive(DIM, rational_quadratic_spline(num_bins=4), hidden=HIDDEN))
)
