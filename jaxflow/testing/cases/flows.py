"""Cases for the ready-made builders of `jaxflow.flows` (their bijectors, tiny sizes)."""

from __future__ import annotations

import functools

import jax

from jaxflow import flows
from jaxflow.testing.cases._registry import normal_input, perturbed_params, register

DIM = 4
SMALL = dict(layers=2, hidden=(8,))


def _builder_case(make_flow, context_dim=None):
    make_flow = functools.cache(make_flow)

    def case(key, *, param_scale=0.3, input_scale=1.0):
        bijector = make_flow().bijector
        params_key, x_key, context_key = jax.random.split(key, 3)
        context = None if context_dim is None else jax.random.normal(context_key, (context_dim,))
        return bijector, perturbed_params(bijector, params_key, param_scale), normal_input(x_key, (DIM,), input_scale), context

    return case


for _name, _make in {
    "nice_flow": lambda: flows.nice(DIM, **SMALL),
    "realnvp_flow": lambda: flows.realnvp(DIM, **SMALL),
    "nsf_coupling_flow": lambda: flows.nsf_coupling(DIM, bins=4, bound=2.0, **SMALL),
    "maf_flow": lambda: flows.maf(DIM, **SMALL),
    "iaf_flow": lambda: flows.iaf(DIM, **SMALL),
    "nsf_autoregressive_flow": lambda: flows.nsf_autoregressive(DIM, bins=4, bound=2.0, **SMALL),
}.items():
    register(_name)(_builder_case(_make))

register("realnvp_flow_conditional")(_builder_case(lambda: flows.realnvp(DIM, context_dim=2, **SMALL), context_dim=2))
register("maf_flow_conditional")(_builder_case(lambda: flows.maf(DIM, context_dim=2, **SMALL), context_dim=2))
