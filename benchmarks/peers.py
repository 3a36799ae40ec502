"""The same models in jaxflow, distrax and flowjax, for timing identical work.

Each builder returns a `Model(params, log_prob, sample)`:
  log_prob(params, x (n, dim)) -> (n,)     sample(params, key, n) -> (n, dim)
Models: realnvp (affine couplings + random permutations), maf (affine MADE layers + random permutations),
nsf (rational-quadratic spline couplings + random permutations); all with MLPs of
`hidden` widths. jaxflow also builds every other ready-made flow of `jaxflow.flows`
(nice, iaf, nsf_autoregressive, flowpp, residual, planar, radial, sylvester), which
no peer expresses. A library that cannot express a model has no builder for it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow import flows
from jaxflow.bijectors import random_permutations
from jaxflow.conditioners import MLP


class Model(NamedTuple):
    params: object
    log_prob: Callable
    sample: Callable


# jaxflow -------------------------------------------------------------------------------------

def _jaxflow(flow, key) -> Model:
    return Model(flow.init(key), flow.log_prob, lambda params, key, n: flow.sample(params, key, (n,)))


def jaxflow_model(name, key, dim, layers, hidden, bins=8) -> Model:
    builders = {
        "realnvp": lambda: flows.realnvp(dim, layers=layers, hidden=hidden),
        "maf": lambda: flows.maf(dim, layers=layers, hidden=hidden),
        "nsf": lambda: flows.nsf_coupling(dim, layers=layers, hidden=hidden, bins=bins, bound=4.0),
        "nice": lambda: flows.nice(dim, layers=layers, hidden=hidden),
        "iaf": lambda: flows.iaf(dim, layers=layers, hidden=hidden),
        "nsf_autoregressive": lambda: flows.nsf_autoregressive(dim, layers=layers, hidden=hidden, bins=bins, bound=4.0),
        "flowpp": lambda: flows.flowpp(dim, layers=layers, hidden=hidden, components=bins),
        "residual": lambda: flows.residual_flow(dim, layers=layers, hidden=hidden),
        "planar": lambda: flows.planar_flow(dim, layers=layers),
        "radial": lambda: flows.radial_flow(dim, layers=layers),
        "sylvester": lambda: flows.sylvester_flow(dim, layers=layers),
    }
    return _jaxflow(builders[name](), key)


# flowjax -------------------------------------------------------------------------------------

def flowjax_model(name, key, dim, layers, hidden, bins=8) -> Model:
    import equinox as eqx
    from flowjax.bijections import Affine, RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    if name not in ("realnvp", "maf", "nsf"):
        raise KeyError(name)
    if len(set(hidden)) != 1:
        raise ValueError("flowjax uses one width for every hidden layer")
    common = dict(base_dist=Normal(jnp.zeros(dim)), flow_layers=layers, nn_width=hidden[0], nn_depth=len(hidden))
    if name == "realnvp":
        flow = coupling_flow(key, transformer=Affine(), **common)
    elif name == "maf":
        flow = masked_autoregressive_flow(key, transformer=Affine(), **common)
    elif name == "nsf":
        flow = coupling_flow(key, transformer=RationalQuadraticSpline(knots=bins, interval=4.0), **common)
    else:
        raise KeyError(name)
    params, static = eqx.partition(flow, eqx.is_inexact_array)

    def log_prob(params, x):
        return eqx.combine(params, static).log_prob(x)

    def sample(params, key, n):
        return eqx.combine(params, static).sample(key, (n,))

    return Model(params, log_prob, sample)


# distrax -------------------------------------------------------------------------------------

def _distrax_permutation(perm):
    import distrax

    inverse_perm = np.argsort(perm)

    class Permute(distrax.Bijector):
        def __init__(self):
            super().__init__(event_ndims_in=1, is_constant_jacobian=True)

        def forward_and_log_det(self, x):
            return x[..., perm], jnp.zeros(x.shape[:-1], x.dtype)

        def inverse_and_log_det(self, y):
            return y[..., inverse_perm], jnp.zeros(y.shape[:-1], y.dtype)

    return Permute()


def _distrax_affine(dim):
    import distrax

    offset = float(np.log(np.expm1(1.0 - 1e-3)))

    def make(raw):
        raw = raw.reshape(*raw.shape[:-1], dim, 2)
        return distrax.ScalarAffine(shift=raw[..., 0], scale=jax.nn.softplus(raw[..., 1] + offset) + 1e-3)

    return make, 2


def _distrax_spline(dim, bins):
    import distrax

    num_params = 3 * bins + 1  # distrax's parametrisation includes the two boundary slopes

    def make(raw):
        raw = raw.reshape(*raw.shape[:-1], dim, num_params)
        return distrax.RationalQuadraticSpline(raw, range_min=-4.0, range_max=4.0, boundary_slopes="identity")

    return make, num_params


def distrax_model(name, key, dim, layers, hidden, bins=8) -> Model:
    """distrax: a Python-loop `Chain` of `MaskedCoupling` + permutation (no MADE in distrax)."""
    import distrax

    if name == "realnvp":
        make_bijector, num_params = _distrax_affine(dim)
    elif name == "nsf":
        make_bijector, num_params = _distrax_spline(dim, bins)
    else:
        raise KeyError(name)
    mask = np.arange(dim) < dim // 2
    net = MLP(tuple(hidden), num_params * dim)
    perms = np.asarray(random_permutations(jax.random.key(1), layers, dim))
    params = [net.init(k, jnp.zeros(dim)) for k in jax.random.split(key, layers)]
    base = distrax.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))

    def build(params):
        bijectors = []
        for p, perm in zip(params, perms):
            coupling = distrax.MaskedCoupling(mask=mask, conditioner=lambda x, p=p: net.apply(p, x), bijector=make_bijector)
            bijectors += [coupling, _distrax_permutation(perm)]
        return distrax.Transformed(base, distrax.Chain(bijectors[::-1]))  # distrax applies the last listed first

    def sample(params, key, n):
        return build(params).sample(seed=key, sample_shape=(n,))

    return Model(params, lambda params, x: build(params).log_prob(x), sample)


BUILDERS = {"jaxflow": jaxflow_model, "flowjax": flowjax_model, "distrax": distrax_model}


def build(library, name, key, dim, layers, hidden, bins=8) -> Model | None:
    """The model, or None when `library` cannot express it."""
    try:
        return BUILDERS[library](name, key, dim, layers, hidden, bins)
    except KeyError:
        return None
