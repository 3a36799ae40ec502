"""Cases for the masked (MAF) and inverse (IAF) autoregressive layers."""

from __future__ import annotations

from jaxflow.bijectors import transformers
from jaxflow.bijectors.autoregressive import inverse_autoregressive, masked_autoregressive
from jaxflow.bijectors.spline import rational_quadratic_spline
from jaxflow.testing.cases._registry import bijector_case, register

DIM = 4
CONTEXT_DIM = 2
HIDDEN = (8,)


register("maf_affine")(bijector_case(lambda: masked_autoregressive(DIM, transformers.affine(), hidden=HIDDEN)))
register("maf_affine_conditional")(
    bijector_case(
        lambda: masked_autoregressive(DIM, transformers.affine(), hidden=HIDDEN, context_dim=CONTEXT_DIM),
        context_dim=CONTEXT_DIM,
    )
)
register("maf_affine_custom_order")(
    bijector_case(lambda: masked_autoregressive(DIM, transformers.affine(), hidden=HIDDEN, order=[2, 0, 3, 1]))
)
register("maf_exp_affine")(bijector_case(lambda: masked_autoregressive(DIM, transformers.exp_affine(), hidden=HIDDEN)))
register("maf_additive")(bijector_case(lambda: masked_autoregressive(DIM, transformers.additive(), hidden=HIDDEN)))
register("iaf_affine")(bijector_case(lambda: inverse_autoregressive(DIM, transformers.affine(), hidden=HIDDEN)))
register("rq_spline_autoregressive")(
    bijector_case(lambda: masked_autoregressive(DIM, rational_quadratic_spline(num_bins=4), hidden=HIDDEN))
)
