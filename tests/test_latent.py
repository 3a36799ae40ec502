"""Latent tools: encode/decode invert each other, interpolation ends at its endpoints, attributes move latents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow import latent
from jaxflow.testing import perturbed_params, with_noisy_log_det


@pytest.fixture(scope="module")
def model():
    flow = jf.Flow(jf.standard_normal(3), jf.stack(jf.chain(jb.affine_coupling(3, hidden=(8,)), jb.reverse()), 3))
    return flow, perturbed_params(flow, jax.random.key(0), 0.3)


def test_decode_inverts_encode(model):
    flow, params = model
    x = jax.random.normal(jax.random.key(1), (5, 3))
    np.testing.assert_allclose(latent.decode(flow, params, latent.encode(flow, params, x)), x, atol=1e-5)


def test_contexts_and_keys_follow_the_rules_of_flow_methods():
    conditional = jf.Flow(jf.standard_normal(3), jb.affine_coupling(3, hidden=(8,), context_dim=3), (3,))
    params = perturbed_params(conditional, jax.random.key(0), 0.3)
    x, context = jax.random.normal(jax.random.key(1), (2, 3, 3)), jnp.array([0.5, -1.0, 2.0])
    shared = latent.encode(conditional, params, x, context)  # a context as long as the batch: still shared
    per_row = latent.encode(conditional, params, x, jnp.broadcast_to(context, (2, 3, 3)))
    assert shared.shape == (2, 3, 3)  # any batch shape, as for Flow.log_prob
    np.testing.assert_allclose(shared, per_row, rtol=1e-6)
    with pytest.raises(ValueError, match="context batch shape"):
        latent.encode(conditional, params, x, jnp.zeros((4, 3)))
    listed = np.broadcast_to(context, (2, 3, 3)).tolist()  # nested lists, as data may be
    np.testing.assert_allclose(latent.encode(conditional, params, x, listed), per_row, rtol=1e-6)
    noisy = jf.Flow(jf.standard_normal(3), with_noisy_log_det(jb.affine(3)))
    with pytest.raises(ValueError, match=r"stochastically: pass key=\.\.\. to this call"):
        latent.encode(noisy, noisy.init(jax.random.key(0)), x)


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_starts_and_ends_at_the_endpoints(model, spherical):
    flow, params = model
    a, b = jnp.array([1.0, -0.5, 0.3]), jnp.array([-2.0, 0.7, 1.1])
    path = latent.interpolate(flow, params, a, b, 7, spherical=spherical)
    assert path.shape == (7, 3)
    np.testing.assert_allclose(path[0], a, atol=1e-5)
    np.testing.assert_allclose(path[-1], b, atol=1e-5)
    z = latent.encode(flow, params, path)
    steps = jnp.linalg.norm(jnp.diff(z, axis=0), axis=1)
    if not spherical:
        np.testing.assert_allclose(steps, steps[0], rtol=1e-4)  # evenly spaced in latent space


@pytest.mark.parametrize("spherical", [False, True])
def test_batched_ends_interpolate_row_by_row(model, spherical):
    flow, params = model
    starts, ends = jax.random.normal(jax.random.key(2), (2, 2, 4, 3))  # batch shape (2, 4)
    paths = latent.interpolate(flow, params, starts, ends, 5, spherical=spherical)
    assert paths.shape == (5, 2, 4, 3)
    for i, j in np.ndindex(2, 4):
        one = latent.interpolate(flow, params, starts[i, j], ends[i, j], 5, spherical=spherical)
        np.testing.assert_allclose(paths[:, i, j], one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"x_start and x_end must have one shape, got \(2, 4, 3\) and \(4, 3\)"):
        latent.interpolate(flow, params, starts, ends[0], 5)


# Exact algebra, checked in float64: the perturbed flow maps a few of these points far out
# (|x| ~ 45), where a float32 round trip loses up to 0.2 in latent space.
@pytest.mark.float64
def test_attribute_vector_moves_one_group_onto_the_other(model):
    flow, params = model
    without = jax.random.normal(jax.random.key(2), (64, 3))
    z_without = latent.encode(flow, params, without)
    shifted = latent.decode(flow, params, z_without + jnp.array([1.0, 0.0, -0.5]))
    vector = latent.attribute_vector(flow, params, shifted, without)
    np.testing.assert_allclose(vector, [1.0, 0.0, -0.5], atol=1e-9)
    moved = latent.apply_attribute(flow, params, without, vector)
    np.testing.assert_allclose(moved, shifted, atol=1e-9)
    # Groups with two batch axes average over both (the first axis only before: a vector per row).
    grouped = latent.attribute_vector(flow, params, shifted.reshape(8, 8, 3), without.reshape(4, 16, 3))
    np.testing.assert_allclose(grouped, vector, atol=1e-12)
    with pytest.raises(ValueError, match="x_with is an empty batch"):
        latent.attribute_vector(flow, params, shifted[:, None][:, :0], without)


def test_temperature_scales_the_latent_spread(model):
    flow, params = model
    cold = latent.sample_with_temperature(flow, params, jax.random.key(3), 20000, 0.5)
    z = latent.encode(flow, params, cold)
    np.testing.assert_allclose(z.std(0), 0.5, rtol=0.03)
    with pytest.raises(ValueError, match="positive"):
        latent.sample_with_temperature(flow, params, jax.random.key(3), 10, 0.0)


def test_spherical_interpolation_from_a_zero_latent_is_linear_and_nan_free():
    flow = jf.Flow(jf.standard_normal(3), jb.affine(3))
    params = perturbed_params(flow, jax.random.key(0), 0.3)
    zero_latent = params["bijector"]["shift"]  # encodes to z = 0 exactly
    x_end = jnp.array([1.5, -2.0, 0.5])

    @jax.jit
    def paths_and_grad(x):
        def spherical(x):
            return latent.interpolate(flow, params, x, x_end, 5, spherical=True)

        linear = latent.interpolate(flow, params, x, x_end, 5)
        return latent.encode(flow, params, x[None]), spherical(x), linear, jax.grad(lambda x: spherical(x).sum())(x)

    z, spherical, linear, grad = paths_and_grad(zero_latent)
    assert not np.any(z), "precondition: a zero latent"
    np.testing.assert_allclose(spherical, linear, atol=1e-6)
    assert np.all(np.isfinite(grad))
    # Ends in one direction (x_end's latent scaled by 2): cos = 1, where arccos's gradient is infinite.
    # Ends in opposite directions (scaled by -2): cos = -1, no single great circle, the straight line.
    for scale in (2.0, -2.0):
        collinear = params["bijector"]["shift"] + scale * (x_end - params["bijector"]["shift"])
        _, spherical, linear, grad = paths_and_grad(collinear)
        np.testing.assert_allclose(spherical, linear, rtol=1e-5, atol=1e-5)
        assert np.all(np.isfinite(grad))


def test_latent_tools_refuse_degenerate_arguments():
    flow = jf.Flow(jf.standard_normal(3), jb.affine(3))
    params, x = flow.init(jax.random.key(0)), jnp.ones((2, 3))
    for num_points in (0, 1, 2.5):
        with pytest.raises(ValueError, match=r"num_points counts both ends and must be an int >= 2"):
            latent.interpolate(flow, params, x[0], x[1], num_points)
    with pytest.raises(ValueError, match="x_without is an empty batch"):
        latent.attribute_vector(flow, params, x, x[:0])
    for num_samples in (-2, 2.5, (3, -1)):
        with pytest.raises(ValueError, match=r"num_samples must be a non-negative int or a tuple of them, got"):
            latent.sample_with_temperature(flow, params, jax.random.key(0), num_samples, 0.7)


def test_temperature_sampling_takes_a_sample_shape_like_flow_sample(model):
    flow, params = model
    flat = latent.sample_with_temperature(flow, params, jax.random.key(5), 6, 0.7)
    shaped = latent.sample_with_temperature(flow, params, jax.random.key(5), (2, 3), 0.7)
    assert flat.shape == (6, 3) and shaped.shape == (2, 3, 3)
    np.testing.assert_allclose(shaped.reshape(6, 3), flat, rtol=1e-6)
    assert latent.sample_with_temperature(flow, params, jax.random.key(5), (), 0.7).shape == (3,)


def test_temperature_sampling_reads_per_sample_contexts_as_flow_sample_does():
    conditional = jf.Flow(jf.standard_normal(3), jb.affine_coupling(3, hidden=(8,), context_dim=2), (2,))
    params = perturbed_params(conditional, jax.random.key(0), 0.3)
    contexts, key = jax.random.normal(jax.random.key(1), (4, 2)), jax.random.key(6)
    hot = latent.sample_with_temperature(conditional, params, key, (), 1.0, contexts)
    assert hot.shape == (4, 3)  # one draw per context, as Flow.sample draws
    np.testing.assert_allclose(hot, conditional.sample(params, key, (), contexts), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"sample_with_temperature: num_samples \(5,\) does not match the context"):
        latent.sample_with_temperature(conditional, params, key, 5, 0.7, contexts)


def test_temperature_can_be_traced_under_jit_and_vmap(model):
    flow, params = model

    def sample(temperature):
        return latent.sample_with_temperature(flow, params, jax.random.key(4), 8, temperature)

    batched = jax.vmap(sample)(jnp.array([0.5, 1.0]))
    assert batched.shape == (2, 8, 3)
    np.testing.assert_allclose(batched[1], sample(1.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(sample)(0.5), sample(0.5), rtol=1e-5, atol=1e-5)
    for bad in (float("nan"), float("inf")):  # inf returned NaN draws
        with pytest.raises(ValueError, match=f"temperature must be a finite positive number, got {bad}"):
            sample(bad)
    with pytest.raises(ValueError, match=r"temperature must be a scalar, got shape \(2,\); jax.vmap over"):
        sample(jnp.array([0.5, 1.0]))  # numpy's "truth value of an array is ambiguous" before


def test_conditional_attribute_vectors_take_each_groups_contexts():
    conditional = jf.Flow(jf.standard_normal(2), jb.affine_coupling(2, hidden=(8,), context_dim=1), 1)
    params = perturbed_params(conditional, jax.random.key(0), 0.5)
    x_with, x_without = jax.random.normal(jax.random.key(1), (2, 3, 2))
    context_with, context_without = jnp.ones((3, 1)), -jnp.ones((3, 1))
    vector = latent.attribute_vector(
        conditional, params, x_with, x_without, context_with=context_with, context_without=context_without
    )
    expected = (
        latent.encode(conditional, params, x_with, context_with).mean(0)
        - latent.encode(conditional, params, x_without, context_without).mean(0)
    )
    np.testing.assert_allclose(vector, expected, rtol=1e-6)
    assert not np.allclose(vector, latent.attribute_vector(  # the contexts matter
        conditional, params, x_with, x_without, context_with=context_with, context_without=context_with))
    path = latent.interpolate(conditional, params, x_with[0], x_without[0], 4, context=jnp.ones(1))
    np.testing.assert_allclose(path[-1], x_without[0], atol=1e-5)
    with pytest.raises(ValueError, match="one context of shape \\(1,\\), shared by the ends and the path"):
        latent.interpolate(conditional, params, x_with[0], x_without[0], 4, context=jnp.ones((2, 1)))


def test_interpolate_takes_list_ends_and_apply_attribute_checks_the_vector(model):
    flow, params = model
    path = latent.interpolate(flow, params, [0.0, 1.0, 2.0], [1.0, 0.0, -1.0], num_points=3)  # raw jnp.stack error
    np.testing.assert_allclose(path[np.array([0, -1])], [[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]], atol=1e-5)
    x = jnp.zeros((2, 3))
    vectors = ([1.0, 0.0, 0.0], jnp.array([[1.0, 0.0, 0.0]] * 2))  # one shared as a list, one per row
    shared, per_row = (latent.apply_attribute(flow, params, x, vector) for vector in vectors)
    np.testing.assert_allclose(shared, per_row, rtol=1e-6)
    with pytest.raises(ValueError, match=r"vector: expected an array with trailing event shape \(3,\)"):
        latent.apply_attribute(flow, params, x, jnp.ones(4))  # a raw broadcasting error before
