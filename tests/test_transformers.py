"""The transformers' param helpers against plain indexing, and the affine transformer against distrax."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow.bijectors import transformers
from jaxflow.bijectors.transformers import unstack, unstack_params


def _weighted_sum(parts):
    """A loss that weighs each part differently, so a mixed-up gradient cannot pass."""
    return sum((k + 1.0) * jnp.sum(jnp.sin(part)) for k, part in enumerate(parts))


@pytest.mark.parametrize("shape", [(3,), (2, 5, 4), (1, 7)])
def test_unstack_params_matches_indexing(shape):
    theta = jax.random.normal(jax.random.key(0), shape)
    parts = unstack_params(theta)
    assert len(parts) == shape[-1]
    for k, part in enumerate(parts):
        np.testing.assert_array_equal(part, theta[..., k])

    by_split = jax.grad(lambda t: _weighted_sum(unstack_params(t)))(theta)
    by_index = jax.grad(lambda t: _weighted_sum([t[..., k] for k in range(shape[-1])]))(theta)
    np.testing.assert_allclose(by_split, by_index, rtol=1e-6)


def test_unstack_splits_the_leading_axis():
    values = jnp.arange(12.0).reshape(3, 2, 2)
    parts = unstack(values)
    assert [part.shape for part in parts] == [(2, 2)] * 3
    np.testing.assert_array_equal(jnp.stack(parts), values)


def test_affine_agrees_with_distrax_scalar_affine():
    """y = x * scale + shift with scale = softplus(raw + c) + 1e-3, c giving scale 1 at raw 0."""
    theta = 2.0 * jax.random.normal(jax.random.key(0), (6, 2))
    x = 3.0 * jax.random.normal(jax.random.key(1), (6,))
    scale = jax.nn.softplus(theta[:, 1] + np.log(np.expm1(1.0 - 1e-3))) + 1e-3
    _agree(transformers.affine(), theta, x, distrax.ScalarAffine(shift=theta[:, 0], scale=scale))


@pytest.mark.parametrize("max_log_scale", [3.0, 0.5])
def test_exp_affine_agrees_with_distrax_scalar_affine(max_log_scale):
    """(x - shift) * exp(log_scale) = x * exp(log_scale) - shift * exp(log_scale), log_scale = m tanh(raw / m)."""
    theta = 4.0 * jax.random.normal(jax.random.key(2), (6, 2))
    x = 3.0 * jax.random.normal(jax.random.key(3), (6,))
    scale = np.exp(max_log_scale * np.tanh(np.asarray(theta[:, 1]) / max_log_scale))
    reference = distrax.ScalarAffine(shift=-theta[:, 0] * scale, scale=scale)
    _agree(transformers.exp_affine(max_log_scale), theta, x, reference)


def _agree(transformer, theta, x, reference):
    for ours, expected in ((transformer.forward(theta, x), reference.forward_and_log_det(x)),
                           (transformer.inverse(theta, x), reference.inverse_and_log_det(x))):
        np.testing.assert_allclose(ours[0], expected[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours[1], expected[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_log_scale", [0.0, -1.0, np.inf])
def test_exp_affine_needs_a_positive_finite_bound(max_log_scale):
    with pytest.raises(ValueError, match="max_log_scale must be positive and finite"):
        transformers.exp_affine(max_log_scale)
