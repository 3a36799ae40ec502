"""The transformers' param helpers: `unstack` and `unstack_params` against plain indexing, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
