"""The same models in jaxflow, distrax and flowjax, as `(loss_fn, params, data)` for timing.

Each builder returns `loss(params, x) -> scalar` (negative mean log-likelihood of a batch)
and the params it differentiates, so every library is timed on identical work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow.conditioners import MLP


def jaxflow_realnvp(key, dim: int, num_layers: int, hidden=(128, 128)):
    """RealNVP: affine couplings, each followed by a random permutation (scanned constants)."""
    perm_key, init_key = jax.random.split(key)
    layer = lambda perm: jf.chain(jb.affine_coupling(dim, hidden=hidden), jb.permutation(perm))  # noqa: E731
    bijector = jf.stack(layer, num_layers, constants=jb.random_permutations(perm_key, num_layers, dim))
    flow = jf.Flow(jf.standard_normal(dim), bijector)
    return (lambda params, x: -jnp.mean(flow.log_prob(params, x))), flow.init(init_key)


def distrax_realnvp(key, dim: int, num_layers: int, hidden=(128, 128)):
    """The same model as a distrax Chain of MaskedCoupling + permutation (a Python loop)."""
    import distrax

    mask = np.arange(dim) < dim // 2
    net = MLP(tuple(hidden), 2 * dim)
    perms = np.asarray(jb.random_permutations(jax.random.key(1), num_layers, dim))
    keys = jax.random.split(key, num_layers)
    params = [net.init(k, jnp.zeros(dim)) for k in keys]
    offset = float(np.log(np.expm1(1.0 - 1e-3)))

    def make_affine(raw):
        raw = raw.reshape(*raw.shape[:-1], dim, 2)
        return distrax.ScalarAffine(shift=raw[..., 0], scale=jax.nn.softplus(raw[..., 1] + offset) + 1e-3)

    def build(params):
        layers = []
        for p, perm in zip(params, perms):
            coupling = distrax.MaskedCoupling(mask=mask, conditioner=lambda x, p=p: net.apply(p, x), bijector=make_affine)
            layers += [coupling, _distrax_permutation(perm)]
        base = distrax.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))
        return distrax.Transformed(base, distrax.Chain(layers[::-1]))  # distrax applies the last listed first

    return (lambda params, x: -jnp.mean(build(params).log_prob(x))), params


def _distrax_permutation(perm):
    import distrax

    class Permute(distrax.Bijector):
        def __init__(self):
            super().__init__(event_ndims_in=1, is_constant_jacobian=True)

        def forward_and_log_det(self, x):
            return x[..., perm], jnp.zeros(x.shape[:-1], x.dtype)

        def inverse_and_log_det(self, y):
            return y[..., np.argsort(perm)], jnp.zeros(y.shape[:-1], y.dtype)

    return Permute()


def flowjax_realnvp(key, dim: int, num_layers: int, hidden=(128, 128)):
    """flowjax's coupling_flow with an affine transformer (scan-based, like jaxflow)."""
    import equinox as eqx
    from flowjax.bijections import Affine
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow

    if len(set(hidden)) != 1:
        raise ValueError("flowjax uses one width for every hidden layer")
    flow = coupling_flow(
        key, base_dist=Normal(jnp.zeros(dim)), transformer=Affine(), flow_layers=num_layers,
        nn_width=hidden[0], nn_depth=len(hidden), invert=True,
    )
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    return (lambda params, x: -jnp.mean(eqx.combine(params, static).log_prob(x))), params


REALNVP = {"jaxflow": jaxflow_realnvp, "distrax": distrax_realnvp, "flowjax": flowjax_realnvp}
