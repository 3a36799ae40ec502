"""conditioners.Dense and its layouts: a narrowing layer stores `weight` (out, in), any other `kernel` (in, out)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow.conditioners.dense import Dense, kernel_of, stored_layout, with_kernel
from jaxflow.conditioners.mlp import MLP


@pytest.mark.parametrize("in_features, out_features", [(5, 3), (3, 5), (4, 4)])
def test_dense_stores_a_narrowing_layers_weights_as_out_by_in_and_computes_what_flax_dense_does(
    in_features, out_features
):
    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(keys[0], (7, in_features))
    ours, flax_dense = Dense(out_features), nn.Dense(out_features)
    params, flax_params = ours.init(keys[1], h)["params"], flax_dense.init(keys[1], h)["params"]
    narrowing = out_features < in_features
    name, shape = ("weight", (out_features, in_features)) if narrowing else ("kernel", (in_features, out_features))
    assert set(params) == {name, "bias"} and params[name].shape == shape
    as_kernel = (lambda w: w.T) if narrowing else (lambda w: w)
    np.testing.assert_array_equal(as_kernel(params[name]), flax_params["kernel"])  # the same initial draws

    params = {name: params[name], "bias": jax.random.normal(keys[2], (out_features,))}
    flax_params = {"kernel": as_kernel(params[name]), "bias": params["bias"]}
    outputs = ours.apply({"params": params}, h), flax_dense.apply({"params": flax_params}, h)
    np.testing.assert_allclose(*outputs, rtol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(jnp.sin(ours.apply({"params": p}, h))))(params)
    flax_grads = jax.grad(lambda p: jnp.sum(jnp.sin(flax_dense.apply({"params": p}, h))))(flax_params)
    np.testing.assert_allclose(as_kernel(grads[name]), flax_grads["kernel"], rtol=1e-5, atol=1e-6)


def test_kernel_of_reads_either_layout_and_with_kernel_writes_the_one_its_shape_calls_for():
    kernel = jnp.arange(6.0).reshape(3, 2)  # narrowing: stored as weight (2, 3)
    layer = with_kernel({"bias": jnp.zeros(2), "scale": jnp.ones(())}, kernel)
    assert set(layer) == {"weight", "bias", "scale"} and layer["weight"].shape == (2, 3)
    assert stored_layout(3, 2) == ("weight", (2, 3)) and stored_layout(2, 3) == ("kernel", (2, 3))
    np.testing.assert_array_equal(kernel_of(layer), kernel)
    widened = with_kernel(layer, kernel.T)  # widening: the old weight goes, a kernel (2, 3) comes
    assert set(widened) == {"kernel", "bias", "scale"}
    np.testing.assert_array_equal(kernel_of(widened), kernel.T)
    with pytest.raises(ValueError, match=r"one of 'kernel' and 'weight', got \['bias', 'kernel', 'weight'\]"):
        kernel_of({"kernel": kernel, "weight": kernel.T, "bias": jnp.zeros(2)})


def test_mlp_builds_its_layers_with_dense_or_with_flax_dense_and_draws_the_same_function():
    h = jax.random.normal(jax.random.key(0), (5, 8))
    ours, flax_layers = MLP((16,), 4), MLP((16,), 4, dense=nn.Dense)
    params, flax_params = ours.init(jax.random.key(1), h), flax_layers.init(jax.random.key(1), h)
    assert params["params"]["Dense_1"]["weight"].shape == (4, 16)  # 16 -> 4 narrows
    assert flax_params["params"]["Dense_1"]["kernel"].shape == (16, 4)
    perturbed = jax.tree.map(lambda a: a + 0.1, (params, flax_params))  # the zero output layer made non-zero
    np.testing.assert_allclose(ours.apply(perturbed[0], h), flax_layers.apply(perturbed[1], h), rtol=1e-5)


def test_mlp_hidden_kernels_come_from_kernel_init_or_else_from_its_dense_layers():
    h = jnp.ones((2, 3))
    ones = nn.initializers.ones
    own_dense = MLP((4,), 2, dense=functools.partial(nn.Dense, kernel_init=ones)).init(jax.random.key(0), h)
    chosen = MLP((4,), 2, kernel_init=ones).init(jax.random.key(0), h)
    default = MLP((4,), 2).init(jax.random.key(0), h)
    for params in (own_dense, chosen):
        np.testing.assert_array_equal(params["params"]["Dense_0"]["kernel"], np.ones((3, 4)))
    assert not np.any(default["params"]["Dense_0"]["kernel"] == 1.0)
    for params in (own_dense, chosen, default):
        assert not np.any(kernel_of(params["params"]["Dense_1"]))  # the output layer starts at zero
