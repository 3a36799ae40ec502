"""Bad input gets a clear error naming what was expected and what came, never a silent NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow import flows
from jaxflow.bijectors.elementwise import affine_with_params

DIM = 3


def test_event_shape_mismatch_names_both_shapes():
    bijector = jb.affine(DIM)
    with pytest.raises(ValueError, match=r"shape \(3,\).*got shape \(4,\)"):
        bijector.forward(bijector.init(jax.random.key(0)), jnp.zeros(4))


def test_batched_input_to_a_single_event_bijector_points_to_vmap():
    bijector = jb.lu_linear(DIM)
    with pytest.raises(ValueError, match="vmap"):
        bijector.inverse(bijector.init(jax.random.key(0)), jnp.zeros((8, DIM + 1)))


def test_params_of_the_wrong_shape_are_named():
    bijector = jb.affine(DIM)
    with pytest.raises(ValueError, match="log_scale"):
        bijector.forward({"shift": jnp.zeros(DIM), "log_scale": jnp.zeros(DIM + 1)}, jnp.zeros(DIM))


@pytest.mark.parametrize("bijector", [jb.lu_linear(DIM), jb.linear(DIM), jb.shift(DIM)], ids=lambda b: b.name)
def test_params_of_another_size_or_with_missing_entries_are_named(bijector):
    other = bijector.init(jax.random.key(0))
    wrong_size = jax.tree.map(lambda leaf: jnp.zeros(tuple(n + 1 for n in leaf.shape)), other)
    with pytest.raises(ValueError, match=rf"{bijector.name}: params\[.*\] should have shape \({DIM},"):
        bijector.forward(wrong_size, jnp.zeros(DIM))
    with pytest.raises(ValueError, match=rf"{bijector.name}: expected params with keys .* got \[\]"):
        bijector.inverse({}, jnp.zeros(DIM))


@pytest.mark.parametrize("min_scale", [0.0, 1.0, 1.5, -0.5])
def test_an_affine_transformer_scale_floor_outside_zero_one_is_refused(min_scale):
    with pytest.raises(ValueError, match=r"min_scale must lie in \(0, 1\)"):
        jb.transformers.affine(min_scale)


def test_stack_layer_and_constants_must_agree():
    with pytest.raises(TypeError, match="with constants=, layer must be a function"):
        jf.stack(jb.shift(DIM), 2, constants=np.zeros((2, DIM), np.int32))
    with pytest.raises(TypeError, match="without constants=, layer must be a Bijector, got function"):
        jf.stack(lambda perm: jb.permutation(perm), 2)


def test_data_init_needs_one_context_per_row():
    coupling = jb.affine_coupling(DIM, hidden=(4,), context_dim=2)
    params, y = coupling.init(jax.random.key(0)), jnp.zeros((5, DIM))
    with pytest.raises(ValueError, match=r"one context per row of y, shape \(5, \*context_shape\), got shape \(2,\)"):
        jf.initialize_from_data(coupling, params, y, jnp.zeros(2))
    _, x = jf.initialize_from_data(coupling, params, y, jnp.zeros((5, 2)))
    assert x.shape == (5, DIM)


def test_integer_input_is_refused():
    bijector = jb.affine(DIM)
    with pytest.raises(TypeError, match="floating-point"):
        bijector.forward(bijector.init(jax.random.key(0)), jnp.arange(DIM))


def test_missing_context_for_a_conditional_layer():
    bijector = jb.affine_coupling(4, hidden=(4,), context_dim=2)
    with pytest.raises(ValueError, match="needs a context of shape"):
        bijector.forward(bijector.init(jax.random.key(0)), jnp.zeros(4))


def test_context_given_to_an_unconditional_layer():
    bijector = jb.affine_coupling(4, hidden=(4,))
    with pytest.raises(ValueError, match="unconditional"):
        bijector.forward(bijector.init(jax.random.key(0)), jnp.zeros(4), jnp.zeros(2))


def test_context_given_to_an_unconditional_flow():
    flow = jf.Flow(jf.standard_normal(DIM), jb.affine(DIM))
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(flow.init(jax.random.key(0)), jnp.zeros(DIM), context=jnp.zeros(1))


def test_wrong_context_shape_for_a_conditional_flow():
    flow = jf.Flow(jf.standard_normal(4), jb.affine_coupling(4, hidden=(4,), context_dim=2), context_shape=(2,))
    params = flow.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"Flow \(context\): expected an array with trailing event shape \(2,\)"):
        flow.log_prob(params, jnp.zeros((5, 4)), context=jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="does not match the data batch shape"):
        flow.log_prob(params, jnp.zeros((5, 4)), context=jnp.zeros((6, 2)))


def test_singular_fixed_linear_is_refused():
    with pytest.raises(ValueError, match="singular"):
        jb.fixed_linear(np.array([[1.0, 2.0], [2.0, 4.0]]))
    with pytest.raises(ValueError, match="non-finite entries"):  # was numpy's LinAlgError from the SVD
        jb.fixed_linear(np.array([[1.0, np.nan], [0.0, 1.0]]))


@pytest.mark.parametrize(
    "bijector, params, message",
    [
        (jb.linear(2), {"weight": jnp.array([[1.0, 2.0], [2.0, 4.0]])}, "linear: the weight is singular"),
        (jb.planar(2), {"u": jnp.ones(2), "w": jnp.zeros(2), "bias": jnp.zeros(())}, "planar_tanh: w is zero"),
        (jb.sylvester(2, variant="householder"),  # was NaN, even with R = 0 (the identity)
         jb.sylvester(2, variant="householder").init(jax.random.key(0)) | {"reflections": jnp.eye(2).at[1, 1].set(0.0)},
         "sylvester_householder: a Householder reflection is zero"),
    ],
)
def test_non_invertible_params_are_refused_in_eager_calls(bijector, params, message):
    for direction in (bijector.forward, bijector.inverse):
        with pytest.raises(ValueError, match=message):
            direction(params, jnp.ones(2))
    traced = jf.validation.checked(jax.jit(jf.chain(bijector).forward))  # traced: left to validation mode
    with pytest.raises(FloatingPointError, match=bijector.name):
        traced((params,), jnp.ones(2))


def test_not_a_permutation_is_refused():
    with pytest.raises(ValueError, match="not a permutation"):
        jb.permutation(np.array([0, 0, 2]))


def test_chain_params_of_the_wrong_length():
    bijector = jf.chain(jb.shift(DIM), jb.scale(DIM))
    with pytest.raises(ValueError, match="tuple of 2 entries"):
        bijector.forward((jb.shift(DIM).init(None),), jnp.zeros(DIM))


def test_stack_params_without_the_layer_axis():
    bijector = jf.stack(jb.shift(DIM), 4)
    with pytest.raises(ValueError, match="leading axis of 4 layers"):
        bijector.forward(jb.shift(DIM).init(None), jnp.zeros(DIM))


@pytest.mark.parametrize("num_layers", [0, 2.5, True, "4"])
def test_stack_needs_a_positive_integer_number_of_layers(num_layers):
    with pytest.raises(ValueError, match="integer num_layers >= 1"):
        jf.stack(jb.shift(DIM), num_layers)


@pytest.mark.parametrize("builder", ["nice", "realnvp", "nsf_coupling", "maf", "iaf", "nsf_autoregressive", "flowpp",
                                     "planar_flow", "radial_flow", "sylvester_flow", "residual_flow"])
@pytest.mark.parametrize("layers", [0, -1, 2.0])
def test_builders_need_a_positive_integer_number_of_layers(builder, layers):
    with pytest.raises(ValueError, match=rf"layers must be an integer >= 1, got {layers}\."):
        getattr(flows, builder)(4, layers=layers)


def test_stochastic_bijector_without_a_key():
    def noisy(params, x, context=None, *, key):
        return x, jax.random.normal(key, ())

    bijector = jf.Bijector(lambda key: (), noisy, noisy, "noisy", stochastic=True)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jf.chain(bijector, jb.exp()).forward(((), ()), jnp.zeros(DIM))
    flow = jf.Flow(jf.standard_normal(DIM), bijector)
    with pytest.raises(ValueError, match="key"):
        flow.log_prob(flow.init(jax.random.key(0)), jnp.zeros(DIM))
    assert jnp.isfinite(flow.log_prob(flow.init(jax.random.key(0)), jnp.zeros(DIM), key=jax.random.key(1)))


def test_validation_mode_names_the_layer_that_produced_nan():
    bijector = jf.chain(jb.shift(DIM), jb.softplus(), jb.exp())  # softplus inverse of a negative value is NaN
    params = bijector.init(jax.random.key(0))
    y = jnp.array([2.0, 0.5, 1.5])  # exp's inverse gives log(0.5) < 0, outside softplus's range
    assert not jnp.all(jnp.isfinite(bijector.inverse(params, y)[0])), "precondition: NaN without validation"
    expected = r"^jaxflow validation: inverse output of chain\[1\] softplus contains NaN or inf\.$"  # no more
    with pytest.raises(FloatingPointError, match=expected):
        jf.validation.checked(jax.jit(bijector.inverse))(params, y)


def test_validation_mode_names_the_stack_layer_index():
    stacked = jf.stack(jb.affine(DIM), 5)
    params = stacked.init(jax.random.key(0))
    params = {"shift": params["shift"], "log_scale": params["log_scale"].at[3].set(jnp.inf)}
    assert not jnp.all(jnp.isfinite(stacked.forward(params, jnp.ones(DIM))[0])), "unchecked first: no report"
    # The stack reuses its traced body between calls; the checked call must not reuse an unchecked one.
    with pytest.raises(FloatingPointError, match=r"forward output of stack\(affine\) layer 3 contains NaN or inf\.$"):
        jf.validation.checked(stacked.forward)(params, jnp.ones(DIM))
    # A chain in the loop reports first; its message still names the stack's layer.
    chained = jf.stack(jf.chain(jb.affine(DIM), jb.reverse()), 5)
    params = (params, ())
    with pytest.raises(FloatingPointError, match=r"forward output of stack\(chain\(affine, reverse\)\) layer 3: "
                                                 r"chain\[0\] affine contains NaN or inf\.$"):
        jf.validation.checked(chained.forward)(params, jnp.ones(DIM))


def test_validation_mode_reports_nan_data_given_to_a_flow():
    flow = jf.Flow(jf.standard_normal(DIM), jb.affine(DIM))
    log_prob = jf.validation.checked(flow.log_prob)
    params = flow.init(jax.random.key(0))
    assert jnp.isfinite(log_prob(params, jnp.zeros((4, DIM)))).all()
    with pytest.raises(FloatingPointError, match=r"input of Flow\.log_prob contains NaN"):
        log_prob(params, jnp.array([[0.0, 1.0, 1.0], [0.0, jnp.nan, 1.0]]))


def test_validation_inside_grad_and_vmap_is_silent_on_good_input_and_refuses_nan_input():
    flow = jf.Flow(jf.standard_normal(DIM), jf.stack(jb.affine(DIM), 8))
    params = flow.init(jax.random.key(0))
    grads = jf.validation.checked(jax.grad(lambda p, x: flow.log_prob(p, x).mean()))(params, jnp.ones((1024, DIM)))
    # log_prob = -|x - sum of shifts|^2 / 2 + const at unit scales: each shift's gradient is x - 0 = 1.
    np.testing.assert_allclose(grads["bijector"]["shift"], np.ones((8, DIM)))
    per_row = jf.validation.checked(jax.vmap(jax.grad(lambda p, x: flow.log_prob(p, x)), in_axes=(None, 0)))
    assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(per_row(params, jnp.ones((4, DIM)))))
    with pytest.raises(FloatingPointError, match=r"input of Flow\.log_prob contains NaN"):
        per_row(params, jnp.ones((4, DIM)).at[2, 1].set(jnp.nan))


def test_lu_linear_log_diagonal_whose_exp_is_not_a_normal_float_is_refused():
    bijector = jb.lu_linear(DIM)
    for value in (-120.0, 100.0):  # exp underflows to 0 (W singular) or overflows (W infinite) in float32
        params = bijector.init(None) | {"log_diag": jnp.array([value, 0.0, 0.0])}
        for direction in (bijector.forward, bijector.inverse):
            with pytest.raises(ValueError, match=r"lu_linear: params\['log_diag'\] must lie in \(-87.3, 88.7\)"):
                direction(params, jnp.ones(DIM))


def test_factor_out_needs_channels_to_split():
    with pytest.raises(ValueError, match=r"C >= 2 channels to split, got shape \(4, 4, 1\)"):
        jb.factor_out(jb.shift((4, 4, 0)), (4, 4, 1))


@pytest.mark.parametrize("bound", [np.inf, np.nan, 0.0])
def test_spline_bound_must_be_positive_and_finite(bound):
    with pytest.raises(ValueError, match="bound must be positive and finite"):
        jb.rational_quadratic_spline(bound=bound)


@pytest.mark.parametrize("param_shape", [(2, DIM), (DIM + 1,)])
def test_element_wise_params_that_do_not_broadcast_to_the_event_are_refused_at_build_time(param_shape):
    with pytest.raises(ValueError, match=rf"params of shape \({param_shape[0]},.*\) do not broadcast to the event"):
        affine_with_params("affine", (DIM,), param_shape)


@pytest.mark.parametrize("options", [dict(num_steps=20.0), dict(num_steps=20, chunk_size=7.5), dict(num_steps=0)])
def test_fits_refuse_step_counts_that_are_not_positive_ints(options):
    from jaxflow.train import distill, forward_kl, reverse_kl

    flow = jf.Flow(jf.standard_normal(2), jb.affine(2))
    params, key, common = flow.init(jax.random.key(0)), jax.random.key(1), dict(progress=False, **options)
    fits = [
        lambda: forward_kl.fit(key, flow, params, np.zeros((16, 2), np.float32), **common),
        lambda: reverse_kl.fit(key, flow, params, lambda x: -jnp.sum(x**2), **common),
        lambda: distill.fit(key, flow, params, flow, params, **common),
    ]
    for fit in fits:
        with pytest.raises(ValueError, match="num_steps and chunk_size must be positive ints"):
            fit()


def test_data_init_refuses_nan_data_naming_the_row():
    layer = jf.chain(jb.actnorm(DIM), jb.affine(DIM))
    batch = jnp.ones((5, DIM)).at[3, 1].set(jnp.nan)
    with pytest.raises(ValueError, match=r"the data batch y: 1 of 5 rows contain NaN or inf \(the first is row 3\)"):
        jf.initialize_from_data(layer, layer.init(jax.random.key(0)), batch)
    affine = jb.affine(DIM)  # an empty batch passes through, as before the check
    _, x = jf.initialize_from_data(affine, affine.init(jax.random.key(0)), jnp.zeros((0, DIM)))
    assert x.shape == (0, DIM)


def test_a_checked_jit_neither_shares_nor_poisons_the_plain_jits_trace():
    # JAX shares one trace among every jax.jit of a function: a checked jit traced after a plain one
    # returned NaN unreported, and a plain one traced after a checked one failed ("not functionalized").
    flow = jf.Flow(jf.standard_normal(2), jf.stack(jf.chain(jb.affine(2), jb.reverse()), 2))
    params, x, bad = flow.init(jax.random.key(0)), jnp.ones((3, 2)), jnp.ones((3, 2)).at[0, 0].set(jnp.nan)

    def plain_first(params, x):
        return -flow.log_prob(params, x).mean()

    def checked_first(params, x):
        return -flow.log_prob(params, x).mean()

    expected = 1 + np.log(2 * np.pi)  # -log N((1, 1); 0, I), the flow being the identity
    np.testing.assert_allclose(jax.jit(plain_first)(params, x), expected, rtol=1e-6)
    with pytest.raises(FloatingPointError, match=r"input of Flow\.log_prob"):
        jf.validation.checked(jax.jit(plain_first))(params, bad)
    np.testing.assert_allclose(jf.validation.checked(jax.jit(checked_first))(params, x), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(checked_first)(params, x), expected, rtol=1e-6)
    assert np.isnan(jax.jit(checked_first)(params, bad))  # plain calls stay unchecked


def test_validation_names_a_flows_single_layer_and_its_base():
    # Only chain and stack checked their layers: a flow of one leaf layer, or its base, went unreported.
    leaf = jf.Flow(jf.standard_normal(2), jb.sigmoid())
    with pytest.raises(FloatingPointError, match="inverse output of sigmoid contains NaN"):
        jf.validation.checked(leaf.log_prob)(leaf.init(jax.random.key(0)), jnp.array([[0.5, 2.0]]))
    wide = jf.Flow(jf.diagonal_normal(2), jb.affine(2))
    params = wide.init(jax.random.key(0))
    params["base"]["log_scale"] = jnp.array([1000.0, 0.0])
    with pytest.raises(FloatingPointError, match="sample output of base diagonal_normal contains NaN"):
        jf.validation.checked(wide.sample_and_log_prob)(params, jax.random.key(1), (2,))


def test_sample_shapes_must_be_static_under_jit():
    flow = jf.Flow(jf.standard_normal(2), jb.affine(2))
    params = flow.init(jax.random.key(0))
    for shape in ((8,), 8):  # a raw TracerArrayConversionError, or "got (JitTracer(...),)", before
        with pytest.raises(ValueError, match=r"shape must be static .* static_argnames=.shape."):
            jax.jit(flow.sample)(params, jax.random.key(1), shape)
    assert jax.jit(flow.sample, static_argnames="shape")(params, jax.random.key(1), (8,)).shape == (8, 2)


def test_diagonal_normal_params_that_would_broadcast_are_refused():
    # A scalar log_scale broadcast in the density but counted once in the normaliser: silently wrong.
    base = jf.diagonal_normal(4)
    for params in ({"loc": jnp.zeros(4), "log_scale": jnp.log(2.0)}, {"loc": jnp.zeros(()), "log_scale": jnp.zeros(4)}):
        with pytest.raises(ValueError, match=r"diagonal_normal: params\['\w+'\] should have shape \(4,\)"):
            base.log_prob(params, jnp.zeros(4))
        with pytest.raises(ValueError, match=r"diagonal_normal: params\['\w+'\] should have shape \(4,\)"):
            base.sample(params, jax.random.key(0))


def test_validation_of_nested_stacks_names_both_layers_in_either_order():
    inner = jf.stack(jf.chain(jb.affine(2), jb.affine(2)), 3, name="inner")
    outer = jf.stack(inner, 2, name="outer")
    params = jax.tree.map(lambda leaf: jnp.full_like(leaf, 1e30), outer.init(jax.random.key(0)))
    for bijector, layer_params, message in [
        (outer, params, r"outer layer 0: inner layer 0: chain\[0\] affine"),
        (inner, jax.tree.map(lambda leaf: leaf[0], params), r"of inner layer 0: chain\[0\] affine"),
        (outer, params, r"outer layer 0: inner layer 0: chain\[0\] affine"),  # no body traced for another
    ]:
        with pytest.raises(FloatingPointError, match=message):
            jf.validation.checked(bijector.forward)(layer_params, jnp.ones(2))


@pytest.mark.parametrize("make", [jb.lu_linear, jb.linear])
def test_channel_mixing_needs_a_channel_axis(make):
    with pytest.raises(ValueError, match=r"linear: mixes the last axis of the event and needs a shape \(\.\.\., C\)"):
        make(())  # an IndexError before
