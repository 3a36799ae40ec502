"""Bases and Flow: densities are normalised, batch shapes are any, sampling costs one forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow.testing import perturbed_params


def test_standard_normal_matches_scipy(dtype):
    base = jf.standard_normal((2, 3))
    x = jax.random.normal(jax.random.key(0), (2, 3))
    np.testing.assert_allclose(base.log_prob((), x), scipy.stats.norm.logpdf(np.asarray(x)).sum(), rtol=1e-6)


def test_diagonal_normal_matches_scipy():
    base = jf.diagonal_normal(3)
    params = {"loc": jnp.array([0.5, -1.0, 2.0]), "log_scale": jnp.array([0.1, -0.3, 0.7])}
    x = jnp.array([0.0, 1.0, -2.0])
    scale = np.exp(np.asarray(params["log_scale"]))
    expected = scipy.stats.norm.logpdf(np.asarray(x), np.asarray(params["loc"]), scale).sum()
    np.testing.assert_allclose(base.log_prob(params, x), expected, rtol=1e-6)
    samples = jax.vmap(base.sample, in_axes=(None, 0))(params, jax.random.split(jax.random.key(1), 20000))
    np.testing.assert_allclose(samples.std(0), scale, rtol=0.03)
    assert np.all(np.abs(samples.mean(0) - np.asarray(params["loc"])) < 5 * scale / np.sqrt(20000))
    for column, loc, sd in zip(np.asarray(samples).T, np.asarray(params["loc"]), scale):
        assert scipy.stats.kstest(column, scipy.stats.norm(loc, sd).cdf).pvalue > 1e-3


def _flow(dim=2):
    bijector = jf.stack(jf.chain(jb.affine_coupling(dim, hidden=(8,)), jb.reverse()), 3)
    flow = jf.Flow(jf.diagonal_normal(dim), bijector)
    return flow, perturbed_params(flow, jax.random.key(0), 0.4)


def test_one_dimensional_flow_density_integrates_to_one():
    flow = jf.Flow(jf.standard_normal(1), jf.chain(jb.affine(1), jb.softplus(), jb.affine(1)))
    params = perturbed_params(flow, jax.random.key(3), 0.5)
    # Outside the support (left of the last affine map's shift) log_prob is NaN: count it as 0.
    grid = jnp.linspace(-30.0, 30.0, 200001)[:, None]
    density = jnp.exp(flow.log_prob(params, grid))
    total = jnp.trapezoid(jnp.nan_to_num(density), grid[:, 0])
    np.testing.assert_allclose(total, 1.0, atol=2e-3)


def test_two_dimensional_flow_density_integrates_to_one():
    flow, params = _flow()
    axis = jnp.linspace(-12.0, 12.0, 481)
    grid = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), -1)
    density = jnp.exp(flow.log_prob(params, grid))
    total = jnp.trapezoid(jnp.trapezoid(density, axis, axis=1), axis)
    np.testing.assert_allclose(total, 1.0, atol=5e-3)


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_log_prob_and_sample_accept_any_batch_shape(batch_shape):
    flow, params = _flow()
    x, log_q = flow.sample_and_log_prob(params, jax.random.key(1), batch_shape)
    assert x.shape == (*batch_shape, 2) and log_q.shape == batch_shape
    np.testing.assert_allclose(flow.log_prob(params, x), log_q, rtol=1e-4, atol=1e-4)
    assert flow.sample(params, jax.random.key(1), batch_shape).shape == x.shape


def test_sample_and_log_prob_runs_only_the_forward_pass():
    flow, params = _flow()
    calls = []
    bijector = flow.bijector

    def counting_inverse(p, y, context=None):
        calls.append(1)
        return bijector.inverse(p, y, context)

    counted = flow._replace(bijector=bijector._replace(inverse=counting_inverse))
    jax.jit(lambda p, k: counted.sample_and_log_prob(p, k, (7,)))(params, jax.random.key(0))
    assert not calls


def test_samples_follow_the_pushforward():
    flow = jf.Flow(jf.standard_normal(2), jb.affine(2))
    params = {"base": (), "bijector": {"shift": jnp.array([1.0, -2.0]), "log_scale": jnp.log(jnp.array([0.5, 3.0]))}}
    x = flow.sample(params, jax.random.key(0), (40000,))
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(x.std(0), [0.5, 3.0], rtol=0.02)


def _conditional_flow():
    bijector = jf.stack(jf.chain(jb.affine_coupling(2, hidden=(8,), context_dim=3), jb.reverse()), 2)
    flow = jf.Flow(jf.standard_normal(2), bijector, context_shape=(3,))
    return flow, perturbed_params(flow, jax.random.key(0), 0.5)


def test_one_context_broadcasts_over_the_batch():
    flow, params = _conditional_flow()
    x = jax.random.normal(jax.random.key(1), (4, 2))
    context = jnp.array([0.3, -1.0, 2.0])
    shared = flow.log_prob(params, x, context)
    per_sample = flow.log_prob(params, x, jnp.broadcast_to(context, (4, 3)))
    np.testing.assert_allclose(shared, per_sample, rtol=1e-6)
    other = flow.log_prob(params, x, -context)
    assert not np.allclose(shared, other), "the context must change the density"


def test_sampling_with_one_context_per_sample():
    flow, params = _conditional_flow()
    contexts = jax.random.normal(jax.random.key(2), (6, 3))
    x, log_q = flow.sample_and_log_prob(params, jax.random.key(3), context=contexts)
    assert x.shape == (6, 2)
    np.testing.assert_allclose(flow.log_prob(params, x, contexts), log_q, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not match the context batch shape"):
        flow.sample(params, jax.random.key(3), (5,), context=contexts)
    listed = flow.sample_and_log_prob(params, jax.random.key(3), context=np.asarray(contexts).tolist())
    np.testing.assert_allclose(listed[1], log_q, rtol=1e-6)  # nested lists are contexts too, as they are data


def test_an_int_context_shape_reads_as_a_vector():
    flow, params = _conditional_flow()
    by_int = jf.Flow(flow.base, flow.bijector, 3)
    assert by_int.context_shape == (3,) and by_int == flow
    x, context = jax.random.normal(jax.random.key(1), (4, 2)), jnp.ones(3)
    np.testing.assert_allclose(by_int.log_prob(params, x, context), flow.log_prob(params, x, context))


@pytest.mark.parametrize("shape", [(-1,), (-2, -3), -1, 2.5, (3.7,), (True,), "3", None])
def test_sample_rejects_a_shape_that_is_not_a_tuple_of_non_negative_ints(shape):
    flow, params = _flow()
    with pytest.raises(ValueError, match=r"shape must be a non-negative int or a tuple of them, got"):
        flow.sample_and_log_prob(params, jax.random.key(0), shape)


def test_sample_accepts_python_and_numpy_ints_as_shape():
    flow, params = _flow()
    assert flow.sample(params, jax.random.key(0), np.int64(3)).shape == (3, 2)
    assert flow.sample(params, jax.random.key(0), (np.int32(2), 0)).shape == (2, 0, 2)
    assert flow.sample(params, jax.random.key(0), np.array(3)).shape == (3, 2)
    assert flow.sample(params, jax.random.key(0), jnp.array([2, 3])).shape == (2, 3, 2)


# Checkify cannot check a lax.while_loop under vmap: validation mode maps a Flow's events one by one.
def test_validation_mode_checks_the_log_prob_of_a_flow_inverted_by_root_finding():
    flow = jf.flows.planar_flow(2, layers=2)
    params = perturbed_params(flow, jax.random.key(0), 0.5)
    x = jax.random.normal(jax.random.key(1), (3, 2))
    checked = jf.validation.checked(flow.log_prob)(params, x)
    np.testing.assert_allclose(checked, flow.log_prob(params, x), rtol=1e-6)
    assert jf.validation.checked(flow.log_prob)(params, x[:0]).shape == (0,)  # an empty batch: nothing to map


def test_validation_mode_checks_the_samples_of_a_flow_with_an_iterative_inverse():
    flow = jf.flows.flowpp(2, layers=2, hidden=(4,))
    params = perturbed_params(flow, jax.random.key(2), 0.5)
    x, log_q = jf.validation.checked(flow.sample_and_log_prob)(params, jax.random.key(3), (2, 2))
    expected_x, expected_log_q = flow.sample_and_log_prob(params, jax.random.key(3), (2, 2))
    assert x.shape == (2, 2, 2) and log_q.shape == (2, 2)
    np.testing.assert_allclose(x, expected_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_q, expected_log_q, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_event", [False, True])
def test_validation_mode_maps_shared_and_per_event_contexts_like_vmap(per_event):
    flow, params = _conditional_flow()
    x = jax.random.normal(jax.random.key(1), (4, 2))
    context = jax.random.normal(jax.random.key(2), (4, 3) if per_event else (3,))
    checked = jf.validation.checked(flow.log_prob)(params, x, context)
    np.testing.assert_allclose(checked, flow.log_prob(params, x, context), rtol=1e-4)  # log q reaches -1e7


def test_validation_mode_blames_a_non_finite_context_not_a_layer():
    flow, params = _conditional_flow()
    x, context = jax.random.normal(jax.random.key(1), (4, 2)), jnp.ones((4, 3)).at[0, 0].set(jnp.nan)
    with pytest.raises(FloatingPointError, match=r"context of Flow\.log_prob contains NaN or inf"):
        jf.validation.checked(flow.log_prob)(params, x, context)
    with pytest.raises(FloatingPointError, match=r"context of Flow\.sample contains NaN or inf"):
        jf.validation.checked(flow.sample)(params, jax.random.key(0), (), context)
