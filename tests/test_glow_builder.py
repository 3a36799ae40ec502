"""The `glow` builder: shapes, densities against autodiff and hand-computed log-dets, data init, errors, training."""

import math
import operator
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import jaxflow
from jaxflow.bijectors.image import glow_step, squeeze
from jaxflow.flows.glow import glow
from jaxflow.testing.cases.image import relative_perturbation
from jaxflow.train import forward_kl

SHAPE = (4, 4, 1)
NETWORK = dict(hidden_channels=4, num_blocks=1)
FLOW = glow(SHAPE, levels=2, steps_per_level=2, **NETWORK)
BATCH = (3, 2)
SAMPLE_AND_LOG_PROB = jax.jit(lambda params, key: FLOW.sample_and_log_prob(params, key, BATCH))
LOG_PROB = jax.jit(FLOW.log_prob)


def perturbed_flow_params(flow, seed=0, scale=0.3):
    return {"base": (), "bijector": relative_perturbation(flow.bijector, jax.random.key(seed), scale)}


def images(count, seed=1):
    return jax.random.normal(jax.random.key(seed), (count, *SHAPE))


def test_glow_samples_and_scores_batches_of_images():
    params = perturbed_flow_params(FLOW)
    assert FLOW.event_shape == SHAPE and FLOW.context_shape is None
    assert glow(SHAPE, context_dim=3, **NETWORK).context_shape == (3,)
    samples, log_q = SAMPLE_AND_LOG_PROB(params, jax.random.key(2))
    assert samples.shape == (*BATCH, *SHAPE) and log_q.shape == BATCH
    np.testing.assert_allclose(LOG_PROB(params, samples), log_q, rtol=1e-4, atol=1e-4)


def test_log_prob_is_the_base_density_of_the_latent_plus_the_autodiff_log_det():
    params = perturbed_flow_params(FLOW, seed=3)
    x = images(math.prod(BATCH)).reshape(*BATCH, *SHAPE)
    inverse = lambda v: FLOW.bijector.inverse(params["bijector"], v.reshape(SHAPE))[0].reshape(-1)  # noqa: E731
    latent, jacobian = jax.jit(lambda v: (inverse(v), jax.jacfwd(inverse)(v)))(x[0, 0].reshape(-1))
    latent, jacobian = np.asarray(latent, np.float64), np.asarray(jacobian, np.float64)
    expected = stats.norm.logpdf(latent).sum() + np.linalg.slogdet(jacobian)[1]
    np.testing.assert_allclose(LOG_PROB(params, x)[0, 0], expected, rtol=1e-4)


def hand_log_det(bijector_params, image_shape):
    """The inverse log-det of a Glow with volume-preserving couplings: its actnorms and 1x1 convolutions only.

    Level l of an (H, W, C) image has c = 4 C 2^(l-1) channels on H W / 4^l = 4 H W C^2 / c^2
    positions; each step's actnorm there adds -positions * sum(log_scale) and its 1x1
    convolution -positions * log|det W|.
    """
    height, width, channels = image_shape
    positions = lambda c: 4 * height * width * channels**2 / c**2  # noqa: E731
    total = 0.0
    for actnorm in _dicts_holding(bijector_params, "log_scale"):  # stacked over a level's steps
        total -= positions(actnorm["log_scale"].shape[-1]) * np.sum(actnorm["log_scale"])
    for convolution in _dicts_holding(bijector_params, "weight"):
        weights = np.asarray(convolution["weight"], np.float64)
        total -= positions(weights.shape[-1]) * np.sum(np.linalg.slogdet(weights)[1])
    return total


def _dicts_holding(tree, key):
    is_target = lambda node: isinstance(node, dict) and key in node  # noqa: E731
    return [node for node in jax.tree.leaves(tree, is_leaf=is_target) if is_target(node)]


def test_additive_glow_log_det_is_that_of_its_actnorms_and_convolutions():
    flow = glow(SHAPE, levels=2, steps_per_level=2, coupling="additive", lu=False, **NETWORK)
    params = perturbed_flow_params(flow)
    log_det = jax.jit(jax.vmap(lambda v: flow.bijector.inverse(params["bijector"], v)[1]))(images(3))
    np.testing.assert_allclose(log_det, hand_log_det(params["bijector"], SHAPE), rtol=1e-5)
    assert abs(hand_log_det(params["bijector"], SHAPE)) > 1.0  # the perturbation is not a near-identity


def standardised_per_channel(h):
    axes = tuple(range(h.ndim - 1))
    np.testing.assert_allclose(h.mean(axis=axes), 0.0, atol=2e-5)
    np.testing.assert_allclose(h.std(axis=axes), 1.0, atol=2e-4)


def check_steps_by_hand(steps_params, h):
    """Runs a level's stacked steps one at a time (data -> base: last layer first); each actnorm standardises."""
    step_inverse = jax.jit(jax.vmap(glow_step(h.shape[1:], **NETWORK).inverse, in_axes=(None, 0)))
    for index in reversed(range(jax.tree.leaves(steps_params)[0].shape[0])):
        layer_params = jax.tree.map(operator.itemgetter(index), steps_params)
        actnorm = layer_params[2]
        standardised_per_channel((h - actnorm["shift"]) * jnp.exp(-actnorm["log_scale"]))
        h = step_inverse(layer_params, h)[0]
    return h


def test_data_init_standardises_what_enters_every_step_through_non_identity_layers():
    params = perturbed_flow_params(FLOW, scale=0.5)["bijector"]  # couplings and convolutions far from identity
    pixel_scales = 0.5 + jnp.arange(16.0).reshape(SHAPE)
    data = 3.0 + pixel_scales * images(256, seed=4)
    params, _ = jaxflow.initialize_from_data(FLOW.bijector, params, data)
    # params: (squeeze, factor_out(level 2), level-1 steps, unsqueeze); level 2 alike without factor_out.
    level1 = check_steps_by_hand(params[2], jax.vmap(squeeze().forward, in_axes=(None, 0))((), data)[0])
    level2_input = jax.vmap(squeeze().forward, in_axes=(None, 0))((), level1[..., :2])[0]
    check_steps_by_hand(params[1][1], level2_input)


def test_looped_steps_keep_the_program_flat_in_depth_and_unrolled_ones_grow_it():
    """Counts convolutions in the compiled program: a loop holds one step's, an unrolled level one per step."""

    def convolutions(steps, unroll):
        flow = glow(SHAPE, levels=2, steps_per_level=steps, unroll=unroll, **NETWORK)
        params = jax.eval_shape(flow.init, jax.random.key(0))
        compiled = jax.jit(flow.log_prob).lower(params, jnp.zeros((2, *SHAPE))).compile()
        return compiled.as_text().count(" convolution(")

    assert convolutions(1, unroll=1) == convolutions(5, unroll=1)
    assert convolutions(5, unroll=True) > convolutions(1, unroll=True)


@pytest.mark.parametrize(
    "shape, options, message",
    [
        ((6, 8, 1), dict(levels=2), r"divisible by 2\*\*2 = 4; got shape \(6, 8, 1\), which allows at most 1 level"),
        ((8, 8, 3), dict(levels=4), r"at most 3 level"),
        ((7, 8, 1), dict(levels=1), r"at most 0 level"),
        ((8, 8), {}, r"\(H, W, C\)"),
        ((8, 8, 0), {}, r"\(H, W, C\) of positive sizes"),
        ((8, 8, 1), dict(levels=0), "levels must be a positive int"),
        ((8, 8, 1), dict(levels=1.0), "levels must be a positive int"),
        ((8, 8, 1), dict(steps_per_level=0), "steps_per_level must be a positive int"),
        ((8, 8, 1), dict(coupling="spline"), r"coupling must be one of \['additive', 'affine'\], got 'spline'"),
        ((8.5, 8, 1), {}, r"expected a shape of whole sizes, got \(8.5, 8, 1\)"),  # was truncated to (8, 8, 1)
    ],
)
def test_bad_configurations_raise_clear_errors(shape, options, message):
    with pytest.raises(ValueError, match=message):
        glow(shape, **options)


@pytest.mark.parametrize("batch_shape", [(8, 16), (4, 4, 1), (8, 1, 4, 4)])
def test_data_init_names_the_batch_shape_it_expected_and_got(batch_shape):
    """It named one squeeze's event, a shape the caller never passed, and advised jax.vmap."""
    flow = glow((4, 4, 1), levels=1, steps_per_level=1, hidden_channels=4, num_blocks=0)
    params = flow.init(jax.random.key(0))["bijector"]
    expected = f"expected a data batch of shape (batch, *event_shape) = (batch, 4, 4, 1), got shape {batch_shape}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        jaxflow.initialize_from_data(flow.bijector, params, jnp.ones(batch_shape))


def test_a_few_training_steps_reduce_the_loss():
    mixing = jax.random.normal(jax.random.key(5), (16, 16)) / 4
    data = (jax.random.normal(jax.random.key(6), (512, 16)) @ mixing.T + 2.0).reshape(512, *SHAPE)
    _, history = forward_kl.fit(
        jax.random.key(8), FLOW, FLOW.init(jax.random.key(7)), data, num_steps=30, batch_size=64,
        optimizer=optax.adam(1e-2), validation_fraction=0.0, chunk_size=30, progress=False,
    )
    assert history["num_skipped"] == 0
    first, last = history["loss"][:5].mean(), history["loss"][-5:].mean()
    assert last < first - 5.0, (first, last)


@pytest.mark.slow
def test_glow_digits_example_runs(tmp_path, load_example):
    example = load_example("glow_digits")
    summary = example.main(["--steps", "5", "--out", str(tmp_path)])
    assert math.isfinite(summary["test bits/dim (dequantised)"])
    for name in ("samples.png", "interpolations.png", "thickness.png"):
        assert (tmp_path / name).stat().st_size > 0
