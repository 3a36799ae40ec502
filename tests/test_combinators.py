"""chain order, invert, stack (scan equals the Python loop, the traced body does not grow with depth), and the
noisy-log-det wrapper of the test kit."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow.bijectors import base
from jaxflow.testing import check_bijector, perturbed_params, with_noisy_log_det

DIM = 4


def test_chain_applies_the_first_listed_first():
    bijector = jf.chain(jb.shift(DIM), jb.exp())
    params = ({"shift": jnp.full(DIM, 2.0)}, ())
    x = jnp.linspace(-1.0, 1.0, DIM)
    y, log_det = bijector.forward(params, x)
    np.testing.assert_allclose(y, np.exp(np.asarray(x) + 2.0), rtol=1e-6)
    np.testing.assert_allclose(log_det, np.sum(np.asarray(x) + 2.0), rtol=1e-6)


def test_invert_swaps_directions():
    bijector = jb.affine(DIM)
    params = perturbed_params(bijector, jax.random.key(0), 0.5)
    x = jnp.arange(DIM, dtype=jnp.float32)
    inverted = jf.invert(bijector)
    np.testing.assert_array_equal(inverted.forward(params, x)[0], bijector.inverse(params, x)[0])
    np.testing.assert_array_equal(inverted.inverse(params, x)[1], bijector.forward(params, x)[1])


def _layer(perm=None):
    """An affine coupling and a permutation (a reversal when no `perm` is given)."""
    return jf.chain(jb.affine_coupling(DIM, hidden=(8,)), jb.reverse() if perm is None else jb.permutation(perm))


@pytest.mark.float64  # float32 rounding differs with the order of operations, 1e-4 after 5 layers
@pytest.mark.parametrize("select_vectors", [True, False])  # the CPU path, and the GPU/TPU path
@pytest.mark.parametrize("unroll", [1, 2, True])  # 2 does not divide 5: a remainder iteration
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_stack_equals_a_python_loop_over_layers(direction, unroll, select_vectors, monkeypatch):
    monkeypatch.setattr(base, "_selects_layer_vectors", lambda: select_vectors)
    num_layers = 5
    perms = np.asarray(jb.random_permutations(jax.random.key(0), num_layers, DIM))
    stacked = jf.stack(_layer, num_layers, constants=perms, unroll=unroll)
    params = perturbed_params(stacked, jax.random.key(1), 0.4)
    x = jax.random.normal(jax.random.key(2), (DIM,))
    y, log_det = getattr(stacked, direction)(params, x)
    order = range(num_layers) if direction == "forward" else reversed(range(num_layers))
    expected, total = x, 0.0
    for i in order:
        layer_params = jax.tree.map(operator.itemgetter(i), params)
        expected, ld = getattr(_layer(perms[i]), direction)(layer_params, expected)
        total += ld
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_det, total, rtol=1e-12, atol=1e-12)


@pytest.mark.float64
@pytest.mark.parametrize("select_vectors", [True, False])
def test_stack_gradients_equal_the_python_loops(select_vectors, monkeypatch):
    monkeypatch.setattr(base, "_selects_layer_vectors", lambda: select_vectors)
    num_layers = 3
    layer = _layer()
    stacked = jf.stack(layer, num_layers)
    params = perturbed_params(stacked, jax.random.key(1), 0.4)
    x = jax.random.normal(jax.random.key(2), (DIM,))

    def looped(params):
        y, total = x, 0.0
        for i in range(num_layers):
            y, log_det = layer.forward(jax.tree.map(operator.itemgetter(i), params), y)
            total += log_det
        return jnp.sum(y**2) + total

    def scanned(params):
        y, log_det = stacked.forward(params, x)
        return jnp.sum(y**2) + log_det

    expected, got = jax.grad(looped)(params), jax.grad(scanned)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, expected)


def test_both_vector_selections_hand_each_stochastic_layer_the_same_key(monkeypatch):
    stacked = jf.stack(jb.residual(DIM, hidden=(8,), log_det="series"), 3)
    params = perturbed_params(stacked, jax.random.key(1), 0.3)
    x, key = jax.random.normal(jax.random.key(2), (DIM,)), jax.random.key(3)
    results = {}
    for select_vectors in (True, False):
        monkeypatch.setattr(base, "_selects_layer_vectors", lambda selected=select_vectors: selected)
        results[select_vectors] = [getattr(stacked, d)(params, x, key=key) for d in ("forward", "inverse")]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), results[True], results[False])
    assert float(results[True][1][1]) != float(stacked.inverse(params, x, key=jax.random.key(4))[1]), "key unused?"


@pytest.mark.parametrize("select_vectors", [False, True])
def test_a_layers_params_are_its_own_slice_and_nothing_else(select_vectors):
    stacked_params = {"bias": jnp.arange(12.0).reshape(3, 4), "kernel": jnp.arange(24.0).reshape(3, 2, 4)}
    stacked_params["bias"] = stacked_params["bias"].at[0].set(jnp.nan).at[2].set(jnp.inf)
    sliced, selected = base._partition_layer_params(stacked_params, select_vectors=select_vectors)
    layer_slice = jax.tree.map(lambda leaf: leaf[1], sliced)  # what lax.scan hands layer 1
    layer = base._merge_layer_params(layer_slice, selected, jnp.int32(1))
    jax.tree.map(np.testing.assert_array_equal, layer, jax.tree.map(operator.itemgetter(1), stacked_params))


def test_stack_scans_per_layer_constants():
    perms = jb.random_permutations(jax.random.key(0), 3, DIM)
    stacked = jf.stack(jb.permutation, 3, constants=perms)
    x = jnp.arange(DIM, dtype=jnp.float32)
    y, _ = stacked.forward(stacked.init(jax.random.key(1)), x)
    expected = np.arange(DIM)
    for perm in np.asarray(perms):
        expected = expected[perm]
    np.testing.assert_array_equal(y, expected)
    assert stacked.init(jax.random.key(1)) == (), "constants must never become params"


@pytest.mark.parametrize("with_inverse", [False, True])
def test_stacked_permutations_invert_with_or_without_precomputed_inverses(with_inverse):
    perms = np.asarray(jb.random_permutations(jax.random.key(0), 3, DIM))
    if with_inverse:
        constants = (perms, jb.inverse_permutations(perms))
        stacked = jf.stack(lambda c: jb.permutation(c[0], inverse_perm=c[1]), 3, constants=constants)
    else:
        stacked = jf.stack(jb.permutation, 3, constants=perms)
    y = jnp.arange(DIM, dtype=jnp.float32)
    x, _ = stacked.inverse((), y)
    expected = np.arange(DIM)
    for perm in perms[::-1]:
        expected = expected[np.argsort(perm)]  # undo the layers, last first
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(stacked.forward((), x)[0], y)


def test_a_wrong_inverse_permutation_is_refused():
    with pytest.raises(ValueError, match="inverse_perm has shape"):
        jb.permutation(np.array([1, 0, 2]), inverse_perm=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"inverse_perm \[1, 2, 0\] does not invert \[1, 2, 0\]"):
        jb.permutation(np.array([1, 2, 0]), inverse_perm=np.array([1, 2, 0]))
    y, _ = jb.permutation(np.array([1, 2, 0]), inverse_perm=np.array([2, 0, 1])).inverse((), jnp.arange(3.0))
    np.testing.assert_array_equal(y, [2.0, 0.0, 1.0])


def _traced_size(num_layers):
    stacked = jf.stack(_layer(), num_layers)
    params = stacked.init(jax.random.key(0))
    jaxpr = jax.make_jaxpr(lambda p, x: stacked.forward(p, x))(params, jnp.zeros(DIM))
    return len(jaxpr.jaxpr.eqns), str(jaxpr).count(" = ")


def test_stack_program_size_does_not_grow_with_depth():
    assert _traced_size(4) == _traced_size(64)


def _counting_affine():
    """An affine layer that records each time its forward is traced or run; returns (layer, calls)."""
    calls = []
    layer = jb.affine(DIM)

    def counting_forward(params, x, context=None):
        calls.append(1)
        return layer.forward(params, x, context)

    return layer._replace(forward=counting_forward), calls


def test_stack_traces_the_layer_once():
    layer, calls = _counting_affine()
    stacked = jf.stack(layer, 32)
    jax.jit(stacked.forward)(stacked.init(jax.random.key(0)), jnp.zeros(DIM))
    assert len(calls) == 1


def test_eager_calls_of_a_stack_trace_its_layer_once():
    """Eager (un-jitted) calls reuse the compiled scan instead of recompiling it every call."""
    layer, calls = _counting_affine()
    stacked = jf.stack(layer, 4)
    params = stacked.init(jax.random.key(0))
    for x in (jnp.zeros(DIM), jnp.ones(DIM), jnp.arange(DIM, dtype=jnp.float32)):
        stacked.forward(params, x)
    assert len(calls) == 1


def test_data_dependent_initialisation_through_a_stack_standardises_the_batch():
    flow = jf.stack(jf.chain(jb.lu_linear(DIM), jb.actnorm(DIM)), 3)
    params = perturbed_params(flow, jax.random.key(0), 0.3)
    data = 5.0 + 3.0 * jax.random.normal(jax.random.key(1), (256, DIM))
    params, latent = jf.initialize_from_data(flow, params, data)
    z = jax.vmap(flow.inverse, in_axes=(None, 0))(params, data)[0]
    np.testing.assert_allclose(z, latent, rtol=1e-4, atol=1e-4)
    # On the way to the base the data meet the last layer's actnorm first: it must standardise them.
    last = jax.tree.map(lambda p: p[-1], params)
    first_out = jax.vmap(jb.actnorm(DIM).inverse, in_axes=(None, 0))(last[1], data)[0]
    np.testing.assert_allclose(first_out.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(first_out.std(0), 1.0, atol=1e-3)


def test_with_noisy_log_det_keeps_the_values_and_adds_zero_mean_noise_from_the_key():
    exact = jb.affine(DIM)
    noisy, scale, draws = with_noisy_log_det(exact, scale=0.5), 0.5, 4000
    params = perturbed_params(exact, jax.random.key(0), 0.3)
    x = jax.random.normal(jax.random.key(1), (DIM,))
    keys = jax.random.split(jax.random.key(2), draws)
    for direction in ("forward", "inverse"):
        y, log_det = getattr(exact, direction)(params, x)
        ys, log_dets = jax.vmap(lambda k, d=direction: getattr(noisy, d)(params, x, key=k))(keys)
        np.testing.assert_array_equal(ys, jnp.broadcast_to(y, ys.shape))
        assert abs(float(jnp.mean(log_dets) - log_det)) < 4 * scale / np.sqrt(draws)
        np.testing.assert_allclose(jnp.std(log_dets), scale, rtol=0.1)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        base.transform(noisy, "forward", params, x)
    with pytest.raises(ValueError, match="stochastic already"):
        with_noisy_log_det(noisy)


def test_factor_out_of_a_stochastic_layer_is_stochastic_and_hands_it_the_key():
    shape = (2, 2, 4)
    inner = with_noisy_log_det(jb.shift((2, 2, 2)))
    layer = jb.factor_out(inner, shape)
    params, x, key = inner.init(jax.random.key(0)), jnp.ones(shape), jax.random.key(1)
    assert layer.stochastic
    for direction in ("forward", "inverse"):
        y, log_det = getattr(layer, direction)(params, x, key=key)
        inner_y, inner_log_det = getattr(inner, direction)(params, x[..., :2], key=key)
        np.testing.assert_array_equal(y, jnp.concatenate([inner_y, x[..., 2:]], axis=-1))
        assert log_det == inner_log_det != 0.0


def test_the_noisy_twin_passes_the_kit_like_a_stochastic_layer():
    noisy = with_noisy_log_det(jb.affine(3))
    params = perturbed_params(noisy, jax.random.key(0), 0.5)
    check_bijector(noisy, params, jnp.array([0.3, -1.0, 2.0]), key=jax.random.key(1), log_det_tol=0.5)  # noise sd 0.1


def test_ignore_context_keeps_an_unconditional_layer_unconditional_in_a_conditional_flow():
    unconditional = jb.affine_coupling(2, hidden=(8,))
    params = jax.tree.map(lambda a: a + 0.3, unconditional.init(jax.random.key(0)))
    x = jnp.array([0.5, -1.0])
    with pytest.raises(ValueError, match=r"affine_coupling is unconditional .* wrap it in jaxflow\.ignore_context"):
        unconditional.forward(params, x, jnp.ones(3))
    wrapped = jf.ignore_context(unconditional)
    for direction in ("forward", "inverse"):
        for got, expected in zip(getattr(wrapped, direction)(params, x, jnp.ones(3)),
                                 getattr(unconditional, direction)(params, x), strict=True):
            np.testing.assert_array_equal(got, expected)
    maf_layer = jb.masked_autoregressive(2, jb.transformers.affine(), hidden=(8,))
    with pytest.raises(ValueError, match="affine_masked_autoregressive is unconditional"):  # the layer, not its MADE
        maf_layer.inverse(maf_layer.init(jax.random.key(0)), x, jnp.ones(3))
