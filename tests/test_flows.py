"""Ready-made flows: they build, sample, evaluate densities, condition, and compile flat in depth."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxflow import conditioners, flows, initialize_from_data, stack
from jaxflow.bijectors import coupling, random_permutations, transformers
from jaxflow.bijectors.actnorm import actnorm
from jaxflow.bijectors.coupling import half_mask
from jaxflow.conditioners.mlp import MLP, from_linen, from_nnx
from jaxflow.flows._layers import _covering_permutations, untransformed_entries

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


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_actnorms_standardise_a_data_batch_and_keep_the_flow_a_density(name):
    """With actnorm=True every layer's input (data -> base) is set to mean 0, sd 1 by `initialize_from_data`."""
    scales, shifts = np.array([10.0, 0.1, 3.0]), np.array([5.0, -2.0, 100.0])
    data = jnp.asarray(np.random.default_rng(0).normal(size=(256, 3)) * scales + shifts, jnp.float32)
    flow = BUILDERS[name](3, layers=2, hidden=(8,), actnorm=True)
    params = flow.init(jax.random.key(0))
    params["bijector"], base_side = initialize_from_data(flow.bijector, params["bijector"], data)
    np.testing.assert_allclose(np.mean(base_side, axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.std(base_side, axis=0), 1.0, atol=1e-4)
    # The fresh couplings are the identity, so the flow is the standardisation: log q of a
    # Gaussian with the batch's means and sds (its draws come from one).
    expected = -0.5 * np.sum(((data - data.mean(0)) / data.std(0)) ** 2 + np.log(2 * np.pi * data.std(0) ** 2), axis=1)
    np.testing.assert_allclose(flow.log_prob(params, data), expected, rtol=1e-4, atol=1e-3)
    plain = BUILDERS[name](3, layers=2, hidden=(8,))
    assert (plain.bijector.data_init is None) == (name != "flowpp")  # only Flow++ has ActNorms by default


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


@pytest.mark.parametrize("build", [
    lambda **unroll: flows.residual_flow(3, layers=3, hidden=(8,), **unroll),
    lambda **unroll: flows.planar_flow(3, layers=3, activation="leaky_relu", **unroll),
    lambda **unroll: flows.radial_flow(3, layers=3, **unroll),
    lambda **unroll: flows.sylvester_flow(3, layers=3, variant="triangular", **unroll),
], ids=["residual", "planar", "radial", "sylvester"])
def test_unrolled_free_form_and_residual_builders_compute_the_same_flow(build):
    looped, unrolled = build(), build(unroll=True)
    params = jax.tree.map(lambda p: p + 0.1, looped.init(jax.random.key(0)))
    z = jax.random.normal(jax.random.key(1), (5, 3))
    np.testing.assert_allclose(unrolled.bijector.forward(params["bijector"], z[0])[0],
                               looped.bijector.forward(params["bijector"], z[0])[0], rtol=1e-5, atol=1e-5)
    x = looped.sample(params, jax.random.key(2), (5,))
    np.testing.assert_allclose(unrolled.log_prob(params, x), looped.log_prob(params, x), rtol=1e-4, atol=1e-4)
    def scan_unrolls(flow):
        eqns = jax.make_jaxpr(flow.log_prob)(params, x).jaxpr.eqns
        return [eqn.params["unroll"] for eqn in eqns if eqn.primitive.name == "scan"]

    assert scan_unrolls(looped) == [1] and scan_unrolls(unrolled) in ([3], [True])


COUPLING_BUILDERS = ["flowpp", "nice", "nsf_coupling", "realnvp"]


@pytest.mark.parametrize("name", COUPLING_BUILDERS)
@pytest.mark.parametrize("seed", range(4))
def test_coupling_flows_transform_every_entry(name, seed):
    """Each base entry depends on some other data entry: no entry only passes through (seed 0 of dim 2 drew two
    identity permutations before the draws were made to cover)."""
    flow = BUILDERS[name](2, layers=2, hidden=(8,), seed=seed)
    params = jax.tree.map(lambda p: p + 0.3, flow.init(jax.random.key(0)))
    jacobian = jax.jacfwd(lambda x: flow.bijector.inverse(params["bijector"], x)[0])(jnp.array([0.3, -1.2]))
    assert (np.count_nonzero(np.asarray(jacobian), axis=1) == 2).all(), jacobian


def test_covering_permutations_repair_draws_that_leave_entries_out_and_keep_the_others():
    for dim in (2, 3, 4, 7, 16, 64):
        transformed = ~half_mask(dim)
        for layers, seed in itertools.product((2, 3, 8), range(4)):
            perms = _covering_permutations(jax.random.key(seed), layers, dim, transformed)
            assert untransformed_entries(perms, transformed).size == 0, (dim, layers, seed)
            assert (np.sort(perms, axis=1) == np.arange(dim)).all()
            drawn = np.asarray(random_permutations(jax.random.key(seed), layers, dim))
            if untransformed_entries(drawn, transformed).size == 0:
                np.testing.assert_array_equal(perms, drawn)  # a covering draw is kept as drawn
            else:
                np.testing.assert_array_equal(perms[1:], drawn[1:])  # only the first is repaired


def test_untransformed_entries_follow_each_permutation():
    transformed = np.array([False, True, True])  # a coupling of dim 3 changes positions 1 and 2
    identity, rotate = [0, 1, 2], [2, 0, 1]  # rotate: y[0] = x[2], y[1] = x[0], y[2] = x[1]
    assert untransformed_entries(np.array([identity, identity]), transformed).tolist() == [0]
    assert untransformed_entries(np.array([identity, rotate]), transformed).tolist() == [0]  # rotated after the last
    assert untransformed_entries(np.array([rotate, identity]), transformed).tolist() == []  # entry 0 moves to 1


@pytest.mark.parametrize("name", COUPLING_BUILDERS)
def test_coupling_flows_refuse_to_stack_without_reordering(name):
    with pytest.raises(ValueError, match="pass every coupling layer unchanged"):
        BUILDERS[name](4, layers=2, hidden=(8,), permute="none")
    BUILDERS[name](4, layers=1, hidden=(8,), permute="none")  # one coupling is a coupling
    flows.maf(4, layers=2, hidden=(8,), permute="none")  # autoregressive layers change every entry


def hidden_kernels(flow, width):
    """The first hidden layer's kernels, (layers * fan_in * width,), of a coupling flow's stacked MLPs."""
    layer = flow.init(jax.random.key(0))["bijector"][0]["params"]["Dense_0"]
    assert layer["kernel"].shape[-1] == width, "precondition: kernels stored (in, out)"
    return np.asarray(layer["kernel"]).ravel(), layer["kernel"].shape[-2]


def test_spline_couplings_draw_hidden_kernels_uniformly_and_the_others_lecun_normal():
    spline, fan_in = hidden_kernels(flows.nsf_coupling(64, layers=4, hidden=(256, 256)), 256)
    affine, _ = hidden_kernels(flows.realnvp(64, layers=4, hidden=(256, 256)), 256)
    limit = 1 / np.sqrt(fan_in)
    assert np.abs(spline).max() <= limit and np.abs(spline).max() > 0.99 * limit
    np.testing.assert_allclose(spline.std(), limit / np.sqrt(3), rtol=0.02)
    np.testing.assert_allclose(affine.std(), 1 / np.sqrt(fan_in), rtol=0.05)  # truncated normal's std
    assert np.abs(affine).max() > 1.5 * limit


def test_iaf_reverses_the_order_between_layers_and_the_other_autoregressive_flows_permute_at_random():
    assert flows.iaf(3, layers=2).bijector.name == "stack(chain(affine_inverse_autoregressive, reverse))"
    for builder in (flows.maf, flows.nsf_autoregressive):
        assert builder(3, layers=2).bijector.name.endswith(", permutation))")


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="permute"):
        flows.realnvp(4, permute="sideways")
    with pytest.raises(ValueError, match=r"coupling flows: dim must be an integer >= 2 \(a coupling splits"):
        flows.realnvp(1)
    # Raw errors from inside JAX before (maf(4.0): "x must be an integer"; seed=None: "not a valid value").
    with pytest.raises(ValueError, match=r"autoregressive flows: dim must be a positive int, got 4\.0"):
        flows.maf(4.0)
    with pytest.raises(ValueError, match=r"coupling flows: dim must be an integer >= 2 .*got '4'"):
        flows.realnvp("4")
    with pytest.raises(ValueError, match="flowpp: dim must be an integer >= 2"):
        flows.flowpp(1)
    with pytest.raises(ValueError, match=r"seed must be an int \(it draws the random permutations\), got None"):
        flows.realnvp(4, seed=None)
    with pytest.raises(ValueError, match="actnorm must be True or False, got 'yes'"):
        flows.maf(4, actnorm="yes")
    with pytest.raises(ValueError, match=r"coupling: dim must be an integer >= 2 \(one part conditions the other"):
        coupling(1, transformers.affine())
    for options in (dict(hidden_channels=2.5), dict(num_blocks=1.5), dict(out_channels=None)):
        with pytest.raises(ValueError, match="resnet_cnn: need integers out_channels >= 1"):
            conditioners.resnet_cnn((4, 4, 1), **(dict(out_channels=2) | options))


def test_a_conditioner_of_the_wrong_output_size_is_refused_by_coupling():
    """A raw reshape TypeError before; the layout (parameter-major, flat) is now in the error and the docstring."""
    wide = lambda i, o, context_dim: conditioners.mlp(i, o + 1, hidden=(4,), context_dim=context_dim)  # noqa: E731
    layer = coupling(4, transformers.affine(), conditioner=wide)
    message = r"the conditioner must return a flat vector of 2 params x 2 transformed entries, shape \(4,\), " \
              r"parameter-major; got shape \(5,\)"
    with pytest.raises(ValueError, match=message):
        layer.forward(layer.init(jax.random.key(0)), jnp.ones(4))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: flows.realnvp(3, hidden=(0,)), r"mlp: hidden must be a sequence of positive ints .*got \(0,\)"),
        (lambda: flows.realnvp(3, hidden=(-4,)), r"mlp: hidden must be .*got \(-4,\)"),
        (lambda: flows.flowpp(3, hidden=64), "mlp: hidden must be a sequence of positive ints .*got 64"),
        (lambda: flows.realnvp(3, context_dim=0), "mlp: context_dim must be None or a positive int, got 0"),
        (lambda: flows.nsf_coupling(3, context_dim=-1), "mlp: context_dim must be None or a positive int, got -1"),
        (lambda: from_linen(MLP((4,), 2), 3, context_dim=2.0), "from_linen: context_dim must be .*got 2.0"),
        (lambda: from_nnx(lambda rngs: None, context_dim=0), "from_nnx: context_dim must be .*got 0"),
        (lambda: flows.maf(3, hidden=64), "made: hidden must be a sequence of positive ints .*got 64"),
        (lambda: flows.realnvp(3, hidden=np.array([4, 0])), r"mlp: hidden must be .*got \[4, 0\]"),
        (lambda: flows.iaf(3, context_dim=0), "made: context_dim must be None or a positive int, got 0"),
    ],
)
def test_bad_widths_and_context_dims_are_refused_at_build_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _nnx_two_layer(in_dim, out_dim, rngs, dropout=False):
    """A user's nnx network for a coupling's conditioner (flax.nnx imported here, on first use)."""
    from flax import nnx

    class TwoLayer(nnx.Module):
        def __init__(self):
            self.hidden = nnx.Linear(in_dim, 8, rngs=rngs)
            self.out = nnx.Linear(8, out_dim, rngs=rngs)
            self.dropout = nnx.Dropout(0.1, rngs=rngs) if dropout else None

        def __call__(self, h):
            return self.out(jnp.tanh(self.hidden(h)))

    return TwoLayer()


@pytest.mark.parametrize("adapter", ["linen", "nnx"])
def test_a_users_own_module_drives_a_coupling_that_passes_the_kit(adapter):
    from jaxflow.bijectors import transformers
    from jaxflow.bijectors.coupling import coupling
    from jaxflow.testing import check_bijector, perturbed_params

    def network(in_dim, out_dim, context_dim=None):
        if adapter == "linen":
            return from_linen(MLP((8,), out_dim), in_dim, context_dim=context_dim)
        width = in_dim + (context_dim or 0)  # the module takes concat(h, context)
        return from_nnx(lambda rngs: _nnx_two_layer(width, out_dim, rngs), context_dim=context_dim)

    layer = coupling(4, transformers.affine(), context_dim=2, conditioner=network)
    params = perturbed_params(layer, jax.random.key(0), 0.3)
    assert all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree.leaves(params))
    check_bijector(layer, params, jnp.array([0.3, -1.0, 0.5, 2.0]), jnp.array([0.5, -0.2]))


def test_nnx_modules_with_state_besides_params_are_refused():
    # Dropout's RNG streams were returned as params (uint32 and key leaves: jax.grad refused them).
    with pytest.raises(ValueError, match=r"from_nnx: the module holds state besides nnx.Param \(RngCount, RngKey\)"):
        from_nnx(lambda rngs: _nnx_two_layer(3, 2, rngs, dropout=True))


def test_linen_modules_with_state_or_random_streams_are_refused():
    import flax.linen as nn

    class Normalised(nn.Module):
        @nn.compact
        def __call__(self, h):  # running statistics: a second collection beside params
            return nn.BatchNorm(use_running_average=True)(nn.Dense(2)(h))

    class Dropped(nn.Module):
        @nn.compact
        def __call__(self, h):  # a dropout stream: flax asked for rngs at the first call
            return nn.Dropout(0.1, deterministic=False)(nn.Dense(2)(h))

    class Fixed(nn.Module):
        @nn.compact
        def __call__(self, h):  # no variables at all: nothing to refuse
            return jnp.concatenate([h, -h])

    fixed = from_linen(Fixed(), 3)
    np.testing.assert_array_equal(fixed.apply(fixed.init(jax.random.key(0)), jnp.ones(3)), [1, 1, 1, -1, -1, -1])
    with pytest.raises(ValueError, match=r"the module needs state besides params \(collections batch_stats\)"):
        from_linen(Normalised(), 3).init(jax.random.key(0))
    dropped = from_linen(Dropped(), 3)
    with pytest.raises(ValueError, match=r"from_linen: the module needs random numbers when applied"):
        jax.jit(dropped.apply)(dropped.init(jax.random.key(0)), jnp.ones(3))


def test_actnorm_data_init_refuses_degenerate_batches():
    layer = actnorm(3)
    params = layer.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"shape \(batch, \*event_shape\) = \(batch, 3\), got shape \(3,\)"):
        initialize_from_data(layer, params, jnp.ones(3))
    with pytest.raises(ValueError, match=r"at least 2 rows, got shape \(1, 3\)"):
        initialize_from_data(layer, params, jnp.ones((1, 3)))


def test_actnorm_data_init_on_scalar_events_standardises_the_batch():
    batch = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (64,))
    layer = actnorm(())
    params, x = initialize_from_data(layer, layer.init(jax.random.key(0)), batch)
    assert params["shift"].shape == params["log_scale"].shape == ()
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(jax.vmap(layer.inverse, in_axes=(None, 0))(params, batch)[0], x, atol=1e-6)


def test_actnorm_data_init_leaves_constant_channels_unscaled_through_a_stack():
    noise = jax.random.normal(jax.random.key(1), (256, 4))
    # A tiny but real spread; a small one far from zero; a constant.
    batch = noise * jnp.array([2.0, 1e-3, 0.3, 0.0]) + jnp.array([1.0, 0.0, 1000.0, 0.1])
    layers = stack(actnorm(4), 3)
    params, x = initialize_from_data(layers, layers.init(jax.random.key(0)), batch)
    np.testing.assert_allclose(params["log_scale"][-1, :3], np.log(np.std(np.asarray(batch)[:, :3], axis=0)), rtol=1e-4)
    np.testing.assert_array_equal(params["log_scale"][:, 3], 0.0)  # not 1 / rounding error, compounded per layer
    np.testing.assert_allclose(x.std(axis=0)[:3], 1.0, rtol=1e-4)
    np.testing.assert_allclose(x[:, 3], 0.0, atol=1e-7)
    # Differentiable through the init, constant channel included (std's slope at 0 made NaN gradients).
    def standardised_energy(batch):
        params, x = initialize_from_data(layers, layers.init(jax.random.key(0)), batch)
        return jnp.sum(x**2) + jnp.sum(params["log_scale"])

    assert np.all(np.isfinite(jax.grad(standardised_energy)(batch)))

