"""Cases for the core bijectors and combinators."""

from __future__ import annotations

import jax
import numpy as np

from jaxflow import bijectors as jb
from jaxflow.testing.cases._registry import bijector_case, normal_input, perturbed_params, register

DIM = 4
IMAGE = (2, 3, 3)


for _name, _make in {
    "shift": lambda: jb.shift(DIM),
    "scale": lambda: jb.scale(DIM),
    "affine_diagonal": lambda: jb.affine(DIM),
    "exp": lambda: jb.exp(DIM),
    "softplus": lambda: jb.softplus(DIM),
    "sigmoid": lambda: jb.sigmoid(DIM),
    "tanh": lambda: jb.tanh(DIM),
    "permutation": lambda: jb.permutation(np.array([2, 0, 3, 1])),
    "reverse": jb.reverse,
    "lu_linear": lambda: jb.lu_linear(DIM),
    "linear": lambda: jb.linear(DIM),
    "fixed_linear": lambda: jb.fixed_linear(
        np.array([[2.0, 0.5, 0, 0], [0.1, 1.0, 0, 0.3], [0, 0, 1.5, 0], [0.2, 0, 0, 0.7]])
    ),
    "actnorm": lambda: jb.actnorm(DIM),
    "elementwise_shared_params": lambda: jb.elementwise(jb.affine(()), DIM),
    "elementwise_per_element_params": lambda: jb.elementwise(jb.scale(()), DIM, shared_params=False),
    "additive_coupling": lambda: jb.additive_coupling(DIM, hidden=(8,)),
    "affine_coupling": lambda: jb.affine_coupling(DIM, hidden=(8, 8)),
    "affine_coupling_alternating_mask": lambda: jb.affine_coupling(DIM, hidden=(8,), mask=jb.alternating_mask(DIM)),
    "chain": lambda: jb.chain(jb.tanh(), jb.affine(DIM), jb.lu_linear(DIM), jb.affine_coupling(DIM, hidden=(8,))),
    "stack": lambda: jb.stack(jb.chain(jb.affine_coupling(DIM, hidden=(8,)), jb.reverse()), 3),
    "stack_with_permutation_constants": lambda: jb.stack(
        lambda perm: jb.chain(jb.affine_coupling(DIM, hidden=(8,)), jb.permutation(perm)),
        3,
        constants=jb.random_permutations(jax.random.key(7), 3, DIM),
    ),
    "invert_affine_coupling": lambda: jb.invert(jb.affine_coupling(DIM, hidden=(8,))),
}.items():
    register(_name)(bijector_case(_make))

register("logit")(bijector_case(lambda: jb.logit(DIM), input_map=jax.nn.sigmoid))
register("lu_linear_image")(bijector_case(lambda: jb.lu_linear(IMAGE), shape=IMAGE))
register("actnorm_image")(bijector_case(lambda: jb.actnorm(IMAGE), shape=IMAGE))


register("affine_coupling_conditional")(
    bijector_case(lambda: jb.affine_coupling(DIM, hidden=(8,), context_dim=2), context_dim=2)
)
# A conditional chain with an unconditional coupling in it: the context reaches the first layer only.
register("chain_conditional_with_ignore_context")(
    bijector_case(
        lambda: jb.chain(
            jb.affine_coupling(DIM, hidden=(8,), context_dim=2), jb.reverse(),
            jb.ignore_context(jb.affine_coupling(DIM, hidden=(8,))),
        ),
        context_dim=2,
    )
)


@register("freeze")
def _freeze(key, *, param_scale=0.3, input_scale=1.0):
    inner = jb.affine(DIM)
    params_key, x_key = jax.random.split(key)
    bijector = jb.freeze(inner, perturbed_params(inner, params_key, param_scale))
    return bijector, bijector.init(params_key), normal_input(x_key, (DIM,), input_scale), None
