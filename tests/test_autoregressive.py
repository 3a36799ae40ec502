"""MADE and the masked / inverse autoregressive layers: structure checked with autodiff Jacobians and scipy."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxflow.bijectors import transformers
from jaxflow.bijectors.autoregressive import inverse_autoregressive, masked_autoregressive
from jaxflow.bijectors.spline import rational_quadratic_spline
from jaxflow.conditioners import Conditioner
from jaxflow.conditioners.dense import kernel_of
from jaxflow.conditioners.made import hidden_unit_degrees, made, made_masks
from jaxflow.conditioners.mlp import mlp
from jaxflow.testing import perturbed_params

DIM = 5
ORDERS = {"identity": None, "reversed": [4, 3, 2, 1, 0], "shuffled": [2, 0, 4, 1, 3]}


def _order(name):
    order = ORDERS[name]
    return np.arange(DIM) if order is None else np.asarray(order)


def _earlier(order):
    """earlier[j, i]: input i comes strictly before j in the order (computed here, not by the library)."""
    return np.array([[order[i] < order[j] for i in range(len(order))] for j in range(len(order))])


def _perturbed(net, seed=0, scale=0.5):
    """MADE params with a non-zero output layer (fresh ones give theta = 0 and a zero Jacobian)."""
    return perturbed_params(net, jax.random.key(seed), scale)


def _made_jacobian(net, params, x, context=None):
    """d theta[j, p] / d x[i], shape (dim, num_params, dim)."""
    return np.asarray(jax.jit(jax.jacfwd(lambda v: net.apply(params, v, context)))(x))


@pytest.mark.parametrize("order_name", sorted(ORDERS))
@pytest.mark.parametrize("hidden", [(16, 16), (3,), ()])
def test_made_sequential_degrees_see_exactly_the_earlier_inputs(order_name, hidden):
    order = _order(order_name)
    net = made(DIM, 3, hidden=hidden, activation=nn.tanh, order=ORDERS[order_name])
    jacobian = _made_jacobian(net, _perturbed(net), jax.random.normal(jax.random.key(1), (DIM,)))
    allowed = np.broadcast_to(_earlier(order)[:, None, :], jacobian.shape)
    np.testing.assert_array_equal(jacobian[~allowed], 0.0)
    if len(hidden) != 1 or hidden[0] >= DIM - 1:  # wide enough for every degree: every allowed path exists
        assert np.all(jacobian[allowed] != 0.0)


@pytest.mark.parametrize("order_name", sorted(ORDERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_made_random_degrees_stay_autoregressive(order_name, seed):
    order = _order(order_name)
    net = made(DIM, 2, hidden=(12, 12, 12), order=ORDERS[order_name], hidden_degrees="random", key=jax.random.key(seed))
    jacobian = _made_jacobian(net, _perturbed(net, seed), jax.random.normal(jax.random.key(1), (DIM,)))
    allowed = np.broadcast_to(_earlier(order)[:, None, :], jacobian.shape)
    np.testing.assert_array_equal(jacobian[~allowed], 0.0)
    assert np.count_nonzero(jacobian[allowed]) > 0


def test_made_random_degrees_leave_no_hidden_unit_without_inputs():
    for seed in range(10):
        degrees = hidden_unit_degrees(DIM, (4, 4, 4), conditional=False, method="random", key=jax.random.key(seed))
        for mask in made_masks(np.arange(DIM), 1, degrees)[:-1]:  # (in, out) masks into hidden layers
            assert np.all(mask.any(axis=0)), f"seed {seed}: a hidden unit has no incoming connection"


def test_made_random_degrees_depend_on_the_key():
    outputs = []
    for seed in (0, 1):
        net = made(DIM, 1, hidden=(12,), hidden_degrees="random", key=jax.random.key(seed))
        outputs.append(np.asarray(net.apply(_perturbed(net), jnp.ones(DIM))))
    assert not np.allclose(*outputs)


@pytest.mark.parametrize(
    "degrees", [dict(hidden=(16,)), dict(hidden=(9, 6, 4), hidden_degrees="random", key=jax.random.key(5))],
    ids=["sequential", "random"],  # random draws could leave a layer without degree 0, cutting the context off
)
def test_made_context_reaches_every_output_including_the_first_in_order(degrees):
    order = _order("shuffled")
    net = made(DIM, 2, activation=nn.tanh, order=order, context_dim=3, **degrees)
    params, x, context = _perturbed(net), jax.random.normal(jax.random.key(1), (DIM,)), jnp.array([0.3, -1.0, 0.7])
    by_context = np.asarray(jax.jit(jax.jacfwd(lambda c: net.apply(params, x, c)))(context))
    assert np.all(by_context != 0.0)
    by_input = _made_jacobian(net, params, x, context)
    np.testing.assert_array_equal(by_input[~np.broadcast_to(_earlier(order)[:, None, :], by_input.shape)], 0.0)


def test_made_starts_at_zero_and_runs_one_matmul_per_layer():
    hidden = (8, 8, 8)
    net = made(DIM, 3, hidden=hidden)
    params = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (DIM,))
    np.testing.assert_array_equal(net.apply(params, x), np.zeros((DIM, 3)))
    equations = jax.make_jaxpr(net.apply)(params, x).jaxpr.eqns
    assert sum(e.primitive.name == "dot_general" for e in equations) == len(hidden) + 1


def test_made_stores_a_narrowing_layers_weights_as_out_by_in_and_applies_them_as_its_masked_kernels():
    order = _order("shuffled")
    net = made(DIM, 2, hidden=(16,), activation=nn.tanh, order=order)  # 5 -> 16 widens, 16 -> 10 narrows
    params = _perturbed(net)
    layers = params["params"]
    assert layers["MaskedDense_0"]["kernel"].shape == (DIM, 16) and layers["MaskedDense_1"]["weight"].shape == (10, 16)
    masks = made_masks(order, 2, hidden_unit_degrees(DIM, (16,), conditional=False))
    kernels = [kernel_of(layers[f"MaskedDense_{i}"]) * mask for i, mask in enumerate(masks)]
    x = jax.random.normal(jax.random.key(1), (DIM,))
    hidden = np.tanh(x @ kernels[0] + layers["MaskedDense_0"]["bias"])
    expected = (hidden @ kernels[1] + layers["MaskedDense_1"]["bias"]).reshape(2, DIM).T
    np.testing.assert_allclose(net.apply(params, x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bound(params)(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context_dim", [None, 2])
def test_made_bound_to_params_masks_like_apply(context_dim):
    """Every kernel entry is perturbed, masked-out ones included: `bind` must mask them too."""
    net = made(DIM, 3, hidden=(16, 16), order=ORDERS["shuffled"], context_dim=context_dim)
    params = _perturbed(net)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    context = None if context_dim is None else jax.random.normal(jax.random.key(2), (context_dim,))
    np.testing.assert_allclose(net.bound(params)(x, context), net.apply(params, x, context), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hidden_degrees", ["sequential", "random"])
@pytest.mark.parametrize("context_dim", [None, 2])
def test_made_bound_for_the_first_positions_is_exact_there(hidden_degrees, context_dim):
    order = _order("shuffled")
    net = made(DIM, 3, hidden=(16, 16), activation=nn.tanh, order=order, context_dim=context_dim,
               hidden_degrees=hidden_degrees, key=jax.random.key(3))
    params = _perturbed(net)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    context = None if context_dim is None else jax.random.normal(jax.random.key(2), (context_dim,))
    full = np.asarray(net.apply(params, x, context))
    skipped_work = []
    for positions in range(1, DIM + 1):
        theta = np.asarray(net.bound(params, positions)(x, context))
        solved = order < positions
        np.testing.assert_allclose(theta[solved], full[solved], rtol=1e-5, atol=1e-6)
        skipped_work.append(not np.allclose(theta[~solved], full[~solved]))
    assert any(skipped_work), "no positions restricted the network"


def test_conditioners_without_bind_are_bound_by_fixing_the_params():
    net = mlp(3, 4, hidden=(8,))
    params = perturbed_params(net, jax.random.key(0), 0.5)
    x = jnp.arange(3.0)
    assert net.bind is None
    np.testing.assert_array_equal(net.bound(params)(x), net.apply(params, x))


def test_made_rejects_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="permutation"):
        made(3, 2, order=[0, 0, 1])
    with pytest.raises(ValueError, match="permutation"):
        made(3, 2, order=[0, 1])
    with pytest.raises(ValueError, match="permutation"):
        made(3, 2, order=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="key"):
        made(3, 2, hidden_degrees="random")
    with pytest.raises(ValueError, match="sequential"):
        made(3, 2, hidden_degrees="uniform")
    for dim in (2.5, True):
        with pytest.raises(ValueError, match="dim and num_params must be positive ints"):
            made(dim, 2)
    with pytest.raises(ValueError, match="positive"):
        made(0, 2)
    net = made(3, 2, hidden=(4,))
    params = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        net.apply(params, jnp.ones(4))
    with pytest.raises(TypeError, match="floating"):
        net.apply(params, jnp.ones(3, int))
    with pytest.raises(ValueError, match=r"MaskedDense_0 kernel of shape \(3, 4\), got kernel of shape \(3, 6\)"):
        net.bound(made(3, 2, hidden=()).init(jax.random.key(0)))  # params of a MADE without hidden layers
    narrowing = made(3, 2, hidden=(8,))  # its output layer, 8 -> 6, stores weight (6, 8)
    layers = narrowing.init(jax.random.key(0))["params"]
    output_layer = layers["MaskedDense_1"]
    earlier = {"MaskedDense_1": {"kernel": output_layer["weight"].T, "bias": output_layer["bias"]}}
    with pytest.raises(ValueError, match=r"MaskedDense_1 weight of shape \(6, 8\), got kernel of shape \(8, 6\)"):
        narrowing.bound({"params": layers | earlier})  # the (in, out) layout of an earlier jaxflow


TRANSFORMERS = {"affine": transformers.affine, "rq_spline": functools.partial(rational_quadratic_spline, num_bins=4)}


def _maf(transformer="affine", order_name="shuffled", **kwargs):
    """A MAF layer whose MADE uses tanh: every allowed dependency is non-zero, none dies as with relu."""
    conditioner = functools.partial(made, hidden=(16,), activation=nn.tanh)
    transformer = TRANSFORMERS[transformer]()
    return masked_autoregressive(DIM, transformer, order=ORDERS[order_name], conditioner=conditioner, **kwargs)


@pytest.mark.parametrize("transformer", sorted(TRANSFORMERS))
@pytest.mark.parametrize("order_name", ["identity", "shuffled"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_maf_jacobian_is_triangular_in_the_order(transformer, order_name, direction):
    order = _order(order_name)
    bijector = _maf(transformer, order_name)
    params = perturbed_params(bijector, jax.random.key(0), 0.5)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    run = jax.jit(getattr(bijector, direction))
    jacobian = np.asarray(jax.jit(jax.jacfwd(lambda v: run(params, v)[0]))(x))
    earlier_or_self = _earlier(order) | np.eye(DIM, dtype=bool)
    np.testing.assert_array_equal(jacobian[~earlier_or_self], 0.0)
    assert np.all(jacobian[earlier_or_self] != 0.0)  # the full chain: sampling needs all dim passes
    log_det = run(params, x)[1]
    np.testing.assert_allclose(log_det, np.sum(np.log(np.abs(np.diag(jacobian)))), rtol=1e-5, atol=1e-5)


@pytest.mark.float64
@pytest.mark.parametrize("transformer", sorted(TRANSFORMERS))
def test_sequential_forward_is_the_root_of_the_one_pass_inverse(transformer):
    bijector = _maf(transformer)
    params = perturbed_params(bijector, jax.random.key(2), 0.5)
    x = jax.random.normal(jax.random.key(3), (DIM,), jnp.float64)
    inverse = jax.jit(lambda y: bijector.inverse(params, y)[0] - x)
    root = scipy.optimize.fsolve(lambda y: np.asarray(inverse(jnp.asarray(y))), np.zeros(DIM), xtol=1e-13)
    np.testing.assert_allclose(np.asarray(inverse(jnp.asarray(root))), 0.0, atol=1e-10)  # fsolve converged
    np.testing.assert_allclose(jax.jit(bijector.forward)(params, x)[0], root, rtol=1e-9, atol=1e-9)


def test_iaf_is_the_maf_inverted():
    maf = masked_autoregressive(DIM, transformers.affine(), hidden=(8,))
    iaf = inverse_autoregressive(DIM, transformers.affine(), hidden=(8,))
    params = perturbed_params(maf, jax.random.key(0), 0.5)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    for iaf_direction, maf_direction in (("forward", "inverse"), ("inverse", "forward")):
        iaf_out, maf_out = getattr(iaf, iaf_direction)(params, x), getattr(maf, maf_direction)(params, x)
        np.testing.assert_allclose(iaf_out[0], maf_out[0], rtol=1e-6)
        np.testing.assert_allclose(iaf_out[1], maf_out[1], rtol=1e-6)
    assert iaf.name == "affine_inverse_autoregressive"


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_context_changes_every_entry(direction):
    bijector = _maf(context_dim=2)
    params = perturbed_params(bijector, jax.random.key(0), 0.5)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    first, _ = getattr(bijector, direction)(params, x, jnp.array([1.0, -0.5]))
    second, _ = getattr(bijector, direction)(params, x, jnp.array([-1.0, 0.5]))
    assert np.all(np.abs(np.asarray(first) - np.asarray(second)) > 1e-4)  # the first entry in order too


def test_fresh_layer_is_the_identity_and_random_degree_conditioners_plug_in():
    conditioner = functools.partial(made, hidden=(8,), hidden_degrees="random", key=jax.random.key(5))
    bijector = masked_autoregressive(DIM, transformers.affine(), conditioner=conditioner)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    y, log_det = bijector.forward(bijector.init(jax.random.key(0)), x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)
    params = perturbed_params(bijector, jax.random.key(2), 0.5)
    np.testing.assert_allclose(bijector.inverse(params, bijector.forward(params, x)[0])[0], x, rtol=1e-5, atol=1e-5)


def test_sampling_loops_are_traced_once_whatever_the_dim():
    def num_equations(dim):
        bijector = masked_autoregressive(dim, transformers.affine(), hidden=(8,))
        params = bijector.init(jax.random.key(0))
        return len(jax.make_jaxpr(bijector.forward)(params, jnp.zeros(dim)).jaxpr.eqns)

    assert num_equations(24) == num_equations(96)  # four loops of passes either way


def _kernel_products(jaxpr, kernel_shapes, *, in_loop=False):
    """(outside loops, inside loops): counts of products with a kernel's shape in `jaxpr` and its sub-jaxprs."""
    counts = np.zeros(2, int)
    for equation in jaxpr.eqns:
        if equation.primitive.name == "mul" and equation.outvars[0].aval.shape in kernel_shapes:
            counts[int(in_loop)] += 1
        for param in equation.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                is_loop = in_loop or equation.primitive.name in ("scan", "while")
                counts += _kernel_products(inner, kernel_shapes, in_loop=is_loop)
    return counts


def test_sampling_masks_the_made_kernels_once_outside_its_loop():
    bijector = masked_autoregressive(DIM, transformers.affine(), hidden=(8, 8))
    params = bijector.init(jax.random.key(0))
    kernel_shapes = {leaf.shape for leaf in jax.tree.leaves(params) if leaf.ndim == 2}
    jaxpr = jax.make_jaxpr(bijector.forward)(params, jnp.zeros(DIM)).jaxpr
    outside, inside = _kernel_products(jaxpr, kernel_shapes)
    assert inside == 0 and outside >= 3


def test_one_dimensional_layer_is_an_elementwise_map():
    bijector = masked_autoregressive(1, transformers.affine(), hidden=(4,))
    params = perturbed_params(bijector, jax.random.key(0), 0.5)
    y, log_det = bijector.forward(params, jnp.array([0.7]))
    x, inverse_log_det = bijector.inverse(params, y)
    np.testing.assert_allclose(x, [0.7], rtol=1e-6)
    np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-6)


def test_autoregressive_layers_reject_bad_inputs():
    conditional = _maf(context_dim=2)
    params = conditional.init(jax.random.key(0))
    for direction in ("forward", "inverse"):
        run = getattr(conditional, direction)
        with pytest.raises(ValueError, match=r"shape \(5,\)"):
            run(params, jnp.ones((2, DIM)), jnp.ones(2))
        with pytest.raises(ValueError, match="needs a context"):
            run(params, jnp.ones(DIM))
        with pytest.raises(ValueError, match=r"shape \(2,\) as context"):
            run(params, jnp.ones(DIM), jnp.ones(3))
        with pytest.raises(TypeError, match="floating"):
            run(params, jnp.ones(DIM, int), jnp.ones(2))
    unconditional = _maf()
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.inverse(unconditional.init(jax.random.key(0)), jnp.ones(DIM), jnp.ones(2))


def test_a_conditioner_returning_flat_params_is_refused():
    """The coupling layers' flat layout (dim * num_params,) would broadcast into a wrong map and log-det."""

    def flat(dim, num_params, *, order=None, context_dim=None):
        init = lambda key: {"raw": jnp.zeros(dim * num_params)}  # noqa: E731
        return Conditioner(init, lambda params, x, context=None: params["raw"])

    layer = masked_autoregressive(3, transformers.affine(), conditioner=flat)
    params = {"raw": jnp.full(6, 0.5)}
    for direction in (layer.forward, layer.inverse):
        with pytest.raises(ValueError, match=r"must return raw params of shape \(3, 2\), one row per dimension, got "
                                             r"shape \(6,\)"):
            direction(params, jnp.ones(3))
