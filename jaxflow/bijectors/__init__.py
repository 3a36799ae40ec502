"""Bijectors: the protocol, its combinators and the layers built on it."""

from jaxflow.bijectors import root_finding, transformers
from jaxflow.bijectors.actnorm import actnorm
from jaxflow.bijectors.autoregressive import inverse_autoregressive, masked_autoregressive
from jaxflow.bijectors.base import (
    Bijector,
    chain,
    freeze,
    ignore_context,
    initialize_from_data,
    invert,
    stack,
    transform,
)
from jaxflow.bijectors.coupling import (
    additive_coupling,
    affine_coupling,
    alternating_mask,
    coupling,
    half_mask,
    random_mask,
)
from jaxflow.bijectors.elementwise import (
    affine,
    affine_params,
    elementwise,
    exp,
    logit,
    scale,
    shift,
    sigmoid,
    softplus,
    tanh,
)
from jaxflow.bijectors.image import channel_mask, checkerboard_mask, glow_step, image_coupling, squeeze
from jaxflow.bijectors.linear import fixed_linear, linear, lu_linear
from jaxflow.bijectors.mixture_cdf import logistic_mixture_cdf
from jaxflow.bijectors.multiscale import factor_out, multiscale
from jaxflow.bijectors.permutation import inverse_permutations, permutation, random_permutations, reverse
from jaxflow.bijectors.planar import planar, radial
from jaxflow.bijectors.residual import residual
from jaxflow.bijectors.spline import (
    rational_quadratic_spline,
    spline_bijector,
    spline_forward,
    spline_inverse,
    spline_knots,
)
from jaxflow.bijectors.sylvester import sylvester

__all__ = [
    "Bijector", "actnorm", "additive_coupling", "affine", "affine_coupling", "affine_params", "alternating_mask",
    "chain",
    "channel_mask", "checkerboard_mask", "coupling", "elementwise", "exp", "factor_out", "fixed_linear", "freeze",
    "glow_step", "half_mask", "ignore_context", "image_coupling", "initialize_from_data", "inverse_autoregressive",
    "inverse_permutations", "invert", "linear", "logistic_mixture_cdf", "logit", "lu_linear",
    "masked_autoregressive", "multiscale", "permutation", "planar", "radial", "random_mask", "random_permutations",
    "rational_quadratic_spline", "residual", "reverse", "root_finding", "scale", "shift", "sigmoid", "softplus",
    "spline_bijector", "spline_forward", "spline_inverse", "spline_knots", "squeeze", "stack", "sylvester", "tanh",
    "transform", "transformers",
]
