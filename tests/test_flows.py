"""Ready-made flows: they build, sample, evaluate densities, condition, and compile flat in depth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow import flows

BUILDERS = {
    "nice": flows.nice, "realnvp": flows.realnvp, "nsf_coupling": flows.nsf_coupling,
    "maf": flows.maf, "iaf": flows.iaf, "nsf_autoregressive": flows.nsf_autoregressive, "flowpp": flows.flowpp,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_samples_and_evaluates_consistently(name):
    flow = BUILDERS[name](3, layers=3, hidden=(16,))
    params = flow.init(jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
    x, log_q = jax.jit(lambda p: flow.sample_and_log_prob(p, jax.random.key(2), (64,)))(params)
    assert x.shape == (64, 3) and np.isfinite(np.asarray(log_q)).all()
    np.testing.assert_allclose(jax.jit(flow.log_prob)(params, x), log_q, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_is_conditional_when_asked(name):
    flow = BUILDERS[name](3, layers=2, hidden=(8,), context_dim=2)
    assert flow.context_shape == (2,)
    params = jax.tree.map(lambda p: p + 0.1, flow.init(jax.random.key(0)))
    x = jnp.ones((5, 3))
    a, b = flow.log_prob(params, x, jnp.zeros(2)), flow.log_prob(params, x, jnp.ones(2))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("name", ["realnvp", "maf"])
def test_builder_program_does_not_grow_with_layers(name):
    def size(layers):
        flow = BUILDERS[name](4, layers=layers, hidden=(8,))
        jaxpr = jax.make_jaxpr(flow.log_prob)(flow.init(jax.random.key(0)), jnp.zeros((2, 4)))
        return len(jaxpr.jaxpr.eqns)

    assert size(2) == size(32)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_unrolled_builder_computes_the_same_flow(name):
    looped, unrolled = BUILDERS[name](3, layers=3, hidden=(8,)), BUILDERS[name](3, layers=3, hidden=(8,), unroll=True)
    params = jax.tree.map(lambda p: p + 0.1, looped.init(jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (5, 3))
    np.testing.assert_allclose(unrolled.log_prob(params, x), looped.log_prob(params, x), rtol=1e-5, atol=1e-5)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="permute"):
        flows.realnvp(4, permute="sideways")
    with pytest.raises(ValueError, match="dim >= 2"):
        flows.realnvp(1)
