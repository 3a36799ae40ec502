"""Forward-KL training: the loss, the pure step, the chunked loop, validation, early stopping, data checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import jaxflow as jf
from jaxflow.dequantization import uniform_dequantize
from jaxflow.testing import with_noisy_log_det
from jaxflow.train import forward_kl, init_state, make_step

MEAN = np.array([1.0, -1.0])
COV = np.array([[1.0, 0.8], [0.8, 1.0]]) * 0.5


def small_flow(context_dim=None, bijector_wrapper=lambda b: b):
    coupling = jf.bijectors.affine_coupling(2, hidden=(16,), context_dim=context_dim)
    bijector = jf.stack(jf.chain(coupling, jf.bijectors.reverse()), 4)
    return jf.Flow(jf.standard_normal(2), bijector_wrapper(bijector), None if context_dim is None else (context_dim,))


def affine_flow(bijector_wrapper=lambda b: b):
    """A flow that compiles fast, for tests of the training machinery rather than of learning."""
    return jf.Flow(jf.standard_normal(2), bijector_wrapper(jf.bijectors.affine(2)))


@functools.cache
def gaussian_data(num_rows=2000, seed=0):
    return np.random.default_rng(seed).multivariate_normal(MEAN, COV, num_rows).astype(np.float32)


def test_loss_of_the_identity_flow_is_the_standard_normal_negative_log_likelihood():
    flow = small_flow()
    x = gaussian_data()[:64]
    expected = -np.mean(stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(x))
    np.testing.assert_allclose(forward_kl.loss(flow.init(jax.random.key(0)), flow, x), expected, rtol=1e-5)


def test_fit_approaches_the_entropy_of_gaussian_data():
    flow = small_flow()
    valid = gaussian_data(4000, seed=1)
    params, history = forward_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), gaussian_data(), validation_data=valid,
        num_steps=600, progress=False,
    )
    entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * COV))  # the smallest expected -log q
    assert history["loss"].shape == (600,) and history["num_skipped"] == 0
    assert history["loss"][:10].mean() > entropy + 1.0
    assert history["loss"][-100:].mean() < entropy + 0.1
    assert float(forward_kl.loss(params, flow, valid)) < entropy + 0.1
    np.testing.assert_allclose(history["validation_step"], np.arange(100, 601, 100))


def counting(counter):
    """Wraps a bijector so that every trace of its inverse is counted."""

    def wrap(bijector):
        def inverse(params, y, context=None):
            counter.append(1)
            return bijector.inverse(params, y, context)

        return bijector._replace(inverse=inverse)

    return wrap


def test_more_chunks_do_not_mean_more_compilations():
    traces = {}
    for num_chunks in (2, 5):
        counter = []
        flow = affine_flow(bijector_wrapper=counting(counter))
        forward_kl.fit(
            jax.random.key(0), flow, flow.init(jax.random.key(0)), gaussian_data(), num_steps=20 * num_chunks,
            chunk_size=20, progress=False,
        )
        traces[num_chunks] = len(counter)
    assert traces[2] == traces[5] > 0


def test_jitted_step_is_traced_once():
    counter = []
    flow = affine_flow(bijector_wrapper=counting(counter))
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_step(lambda params, x: forward_kl.loss(params, flow, x), optimizer))
    state = init_state(flow.init(jax.random.key(0)), optimizer)
    for i in range(3):
        state, _ = step(state, gaussian_data()[i * 32 : (i + 1) * 32])
    assert len(counter) == 1 and int(state.step) == 3


def test_a_nan_batch_is_skipped_and_leaves_params_unchanged():
    flow = affine_flow()
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_step(lambda params, x: forward_kl.loss(params, flow, x), optimizer))
    state = init_state(flow.init(jax.random.key(0)), optimizer)
    batch = gaussian_data()[:32].copy()
    state, _ = step(state, batch)  # one clean step: params away from init
    batch[5] = np.nan
    new_state, info = step(state, batch)
    assert bool(info.skipped) and not np.isfinite(info.loss)
    unchanged = (new_state.params, new_state.opt_state), (state.params, state.opt_state)
    jax.tree.map(np.testing.assert_array_equal, *unchanged)
    assert int(new_state.step) == 2
    batch[5] = 0.0
    cleaned, info = step(new_state, batch)
    assert not bool(info.skipped)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cleaned.params), jax.tree.leaves(state.params)))


def nan_dequantize(key, x):
    del key
    return x * jnp.nan


def test_nonfinite_steps_raise_or_are_counted():
    flow = affine_flow()
    params = flow.init(jax.random.key(0))
    common = dict(num_steps=20, chunk_size=10, validation_fraction=0.0, dequantize=nan_dequantize, progress=False)
    with pytest.raises(FloatingPointError, match="step 0"):
        forward_kl.fit(jax.random.key(0), flow, params, gaussian_data(), on_nonfinite="raise", **common)
    with pytest.warns(RuntimeWarning, match="every one of the 20 steps was skipped") as warned:
        fitted, history = forward_kl.fit(jax.random.key(0), flow, params, gaussian_data(), **common)
    assert [w.filename for w in warned if "skipped" in str(w.message)] == [__file__]  # the call to the fit
    assert history["num_skipped"] == 20 and history["skipped"].all()
    jax.tree.map(np.testing.assert_array_equal, fitted, params)


def test_skipped_steps_move_schedules_on_but_leave_the_moments():
    """A skipped step keeps Adam's moments and count, while the learning rate follows the step (it stalled)."""
    def loss(params, bad):
        return jnp.where(bad, jnp.nan, jnp.sum((params["w"] - 3.0) ** 2))

    for optimizer, counts in [
        (optax.adam(optax.linear_schedule(1.0, 0.0, 10)), lambda s: (s[0].count, s[1].count)),
        (optax.inject_hyperparams(optax.adam)(optax.linear_schedule(1.0, 0.0, 10)),
         lambda s: (s.inner_state[0].count, s.count)),
    ]:
        step = jax.jit(make_step(loss, optimizer))
        state = init_state({"w": jnp.zeros(2)}, optimizer)
        for i in range(10):
            state, _ = step(state, i % 2 == 0)
        assert int(state.step) == 10 and tuple(map(int, counts(state.opt_state))) == (5, 10)


def test_optimizers_that_read_the_loss_get_it():
    """optax's reduce_on_plateau needs value=, L-BFGS value= and value_fn= (a raw optax TypeError before)."""
    quadratic = lambda params: jnp.sum((params["w"] - 3.0) ** 2)  # noqa: E731
    state = init_state({"w": jnp.zeros(2)}, lbfgs := optax.lbfgs())
    step = jax.jit(make_step(quadratic, lbfgs))
    for _ in range(5):
        state, _ = step(state)
    np.testing.assert_allclose(state.params["w"], 3.0, rtol=1e-5)

    flat = lambda params: jnp.sum(params["w"]) * 0.0 + 1.0  # noqa: E731  (a plateau from the start)
    plateau = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(factor=0.5, patience=2))
    state = init_state({"w": jnp.zeros(2)}, plateau)
    step = jax.jit(make_step(flat, plateau))
    for _ in range(6):
        state, _ = step(state)
    assert float(state.opt_state[1].scale) < 1.0


def test_validation_rows_outside_the_support_are_refused_before_training():
    """One boundary value of a flow onto (0, 1)^2 scored NaN at every evaluation: patience ran out, silently."""
    flow = jf.Flow(jf.standard_normal(2), jf.chain(jf.bijectors.affine(2), jf.bijectors.sigmoid(2)))
    data = np.random.default_rng(0).beta(2, 5, size=(200, 2)).astype(np.float32)
    valid = data[:50].copy()
    valid[17, 0] = 0.0
    with pytest.raises(ValueError, match=r"1 of 50 validation rows have log q = .*the first: \[0\. "):
        forward_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), data, validation_data=valid,
                       num_steps=20, patience=2, progress=False)


def test_a_nonfinite_validation_loss_warns_and_is_never_the_best():
    flow = affine_flow()
    params = flow.init(jax.random.key(0))
    tracker = forward_kl._BestOnValidation(flow, (gaussian_data()[:64], None), 3, 32, jax.random.key(1))
    first = init_state(params, optax.sgd(0.1))
    tracker(first, None)
    diverged = jax.tree.map(lambda a: a * jnp.nan, params)
    with pytest.warns(RuntimeWarning, match="after step 0, 64 of 64 validation rows have log q = nan"):
        tracker(init_state(diverged, optax.sgd(0.1)), None)
    assert tracker.best_params is first.params and tracker.chunks_since_best == 1


def test_early_stopping_stops_after_patience_and_restores_the_best_params():
    flow = affine_flow()
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(500, 2)) + 2).astype(np.float32)
    valid = (rng.normal(size=(200, 2)) - 2).astype(np.float32)  # moving towards train moves away from valid
    patience = 2
    params, history = forward_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), train, validation_data=valid, patience=patience,
        chunk_size=10, num_steps=1000, progress=False,
    )
    losses = history["validation_loss"]
    best = int(np.argmin(losses))
    assert history["loss"].size < 1000
    assert losses.size == best + 1 + patience and np.all(losses[best + 1 :] >= losses[best])
    assert history["best_step"] == history["validation_step"][best]
    np.testing.assert_allclose(-np.mean(flow.log_prob(params, valid)), losses[best], rtol=1e-5)


def test_stochastic_log_dets_are_validated_with_the_same_keys_after_every_chunk():
    def fit(flow):
        return forward_kl.fit(
            jax.random.key(1), flow, flow.init(jax.random.key(0)), gaussian_data(500), num_steps=30, chunk_size=10,
            optimizer=optax.sgd(0.0), progress=False,  # the params never move
        )[1]["validation_loss"]

    noisy, exact = fit(affine_flow(with_noisy_log_det)), fit(affine_flow())
    assert noisy.shape == (3,) and np.all(np.isfinite(noisy))
    np.testing.assert_array_equal(noisy, noisy[0])  # the same params and the same keys: the same loss
    assert noisy[0] != exact[0]  # the noise is there
    np.testing.assert_allclose(noisy[0], exact[0], atol=5 * 0.1 / np.sqrt(50))  # and unbiased


def test_batches_are_epoch_permutations_whatever_the_chunking():
    num_rows, batch_size = 50, 8
    steps_per_epoch = num_rows // batch_size
    key = jax.random.key(3)
    indices = jax.jit(forward_kl._batch_indices, static_argnums=(2, 3, 4))
    whole = indices(key, 0, 4 * steps_per_epoch, num_rows, batch_size)
    pieces = [indices(key, start, 5, num_rows, batch_size) for start in range(0, 4 * steps_per_epoch, 5)]
    np.testing.assert_array_equal(np.concatenate(pieces)[: whole.shape[0]], whole)
    for epoch in np.asarray(whole).reshape(4, -1):
        assert len(set(epoch.tolist())) == steps_per_epoch * batch_size  # no row twice in an epoch


def test_integer_data_with_dequantisation_and_epochs():
    flow = affine_flow()
    counts = np.random.default_rng(0).integers(0, 4, size=(100, 2))
    uniform = lambda key, x: x + jax.random.uniform(key, x.shape)  # noqa: E731
    params, history = forward_kl.fit(
        jax.random.key(0), flow, flow.init(jax.random.key(0)), counts, dequantize=uniform, epochs=40,
        batch_size=32, validation_fraction=0.0, chunk_size=40, progress=False,
    )
    assert history["loss"].shape == (40 * 3,)  # 100 rows, batches of 32: 3 steps per epoch
    assert history["loss"][-20:].mean() < history["loss"][:5].mean() - 0.5
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_conditional_fit_uses_the_context():
    flow = small_flow(context_dim=1)
    rng = np.random.default_rng(0)
    context = rng.normal(size=(1000, 1)).astype(np.float32)
    data = (3 * context + 0.3 * rng.normal(size=(1000, 2))).astype(np.float32)
    params, history = forward_kl.fit(
        jax.random.key(0), flow, flow.init(jax.random.key(0)), data, context=context, num_steps=400,
        optimizer=optax.adam(3e-3), progress=False,
    )
    marginal_entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * np.cov(data.T)))
    assert history["validation_loss"][-1] < marginal_entropy - 0.5  # better than any unconditional fit
    shared = forward_kl.loss(params, flow, data[:5], context[0])
    assert np.isfinite(shared)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(data=np.where(np.arange(100)[:, None] % 40 == 3, np.nan, np.ones((100, 2), np.float32))), ValueError,
         "3 of 100 rows.*row 3"),
        (dict(data=np.ones((100, 3), np.float32)), ValueError, r"expected shape \(num_rows, \*\(2,\)\)"),
        (dict(data=np.ones((100, 2), np.int32)), TypeError, "floating-point.*dequantize"),
        # Out of range for the dequantizer: checked although no validation set is dequantized eagerly.
        (dict(data=np.full((100, 2), 255), validation_fraction=0.0,
              dequantize=lambda key, x: uniform_dequantize(key, x, 4)), ValueError,
         r"must lie in \[0, 4\), got values in \[255, 255\]"),
        (dict(context=np.ones((100, 1), np.float32)), ValueError, "unconditional"),
        (dict(num_steps=10, epochs=2), ValueError, "not both"),
        (dict(patience=3, validation_fraction=0.0), ValueError, "patience needs a validation set"),
        (dict(validation_fraction=1.0), ValueError, "validation_fraction"),
        (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
        (dict(patience=0), ValueError, "patience must be a positive number of chunks"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
        (dict(batch_size=-4), ValueError, "batch_size must be a positive integer, got -4"),
        (dict(batch_size=2.9), ValueError, "batch_size must be a positive integer, got 2.9"),  # was 2
        (dict(validation_context=np.ones((7, 9), np.float32)), ValueError, "validation_context was given without"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(change, error, message):
    flow = affine_flow()
    kwargs = dict(data=np.ones((100, 2), np.float32), progress=False, num_steps=None) | change
    data = kwargs.pop("data")
    with pytest.raises(error, match=message):
        forward_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), data, **kwargs)


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    not_a_directory = tmp_path / "ckpt"
    not_a_directory.write_text("")
    flow = affine_flow()
    with pytest.raises(ValueError, match=r"checkpoint_dir must be a directory .* got the file"):
        forward_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), np.ones((100, 2), np.float32),
                       num_steps=2, chunk_size=2, progress=False, checkpoint_dir=not_a_directory)


def test_a_context_not_matching_the_data_is_refused():
    flow = small_flow(context_dim=1)
    with pytest.raises(ValueError, match=r"should have shape \(100, 1\)"):
        forward_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), np.ones((100, 2), np.float32),
                       context=np.ones((99, 1), np.float32), progress=False)
