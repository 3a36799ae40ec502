"""Image bijectors: squeeze, masks, image couplings, Glow steps, the multi-scale flow and its CNN conditioner."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxflow
from jaxflow.bijectors import transformers
from jaxflow.bijectors.image import channel_mask, checkerboard_mask, glow_step, image_coupling, squeeze
from jaxflow.bijectors.multiscale import multiscale
from jaxflow.conditioners.cnn import resnet_cnn
from jaxflow.testing.cases.image import relative_perturbation

NETWORK = dict(hidden_channels=4, num_blocks=1)


pytestmark = pytest.mark.float64


def reference_squeeze(x):
    """Loops over pixels: output channel c * 4 + 2 * row + col holds pixel (row, col) of each 2x2 block."""
    height, width, channels = x.shape
    y = np.zeros((height // 2, width // 2, 4 * channels))
    for i, j, c in np.ndindex(height, width, channels):
        y[i // 2, j // 2, 4 * c + 2 * (i % 2) + j % 2] = x[i, j, c]
    return y


def jacobian(fn, x):
    """The Jacobian of fn at x, both flattened (compiled: one XLA program instead of many eager ops)."""
    return np.asarray(jax.jit(jax.jacfwd(lambda flat: fn(flat.reshape(x.shape)).reshape(-1)))(x.reshape(-1)))


def perturbed(bijector, seed=0, scale=0.3):
    return relative_perturbation(bijector, jax.random.key(seed), scale)


def image(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("shape", [(4, 4, 2), (2, 6, 3)])
def test_squeeze_matches_a_pixel_loop_and_unsqueezes(shape):
    x = image(shape)
    y, log_det = squeeze().forward((), x)
    np.testing.assert_array_equal(y, reference_squeeze(np.asarray(x)))
    assert log_det == 0.0
    x_back, inverse_log_det = squeeze(shape).inverse((), y)
    np.testing.assert_array_equal(x_back, x)
    assert inverse_log_det == 0.0


def test_squeeze_rejects_odd_sizes_and_bad_channels():
    with pytest.raises(ValueError, match="even H and W"):
        squeeze((3, 4, 1))
    with pytest.raises(ValueError, match="even H and W"):
        squeeze().forward((), jnp.zeros((4, 5, 1)))
    with pytest.raises(ValueError, match="even H and W"):
        squeeze().forward((), jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match="divisible by 4"):
        squeeze().inverse((), jnp.zeros((2, 2, 6)))
    with pytest.raises(ValueError, match=r"shape \(4, 4, 2\)"):
        squeeze((4, 4, 2)).forward((), jnp.zeros((4, 4, 1)))


def test_masks():
    board = checkerboard_mask((2, 3, 2), parity=1)
    expected = np.array([[False, True, False], [True, False, True]])
    np.testing.assert_array_equal(board, np.stack([expected, expected], axis=-1))
    np.testing.assert_array_equal(checkerboard_mask((2, 3, 2), parity=0), ~board)
    np.testing.assert_array_equal(channel_mask((1, 1, 5), parity=0)[0, 0], [True, True, False, False, False])
    np.testing.assert_array_equal(channel_mask((1, 1, 5), parity=1)[0, 0], [False, False, True, True, True])
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_mask((4, 4, 1))
    with pytest.raises(ValueError, match="two pixels"):
        checkerboard_mask((1, 1, 3))
    with pytest.raises(ValueError, match="parity"):
        channel_mask((4, 4, 2), parity=2)


@pytest.mark.parametrize(
    "mask, parity, shape",
    [
        ("checkerboard", 0, (4, 4, 2)),
        ("checkerboard", 1, (4, 4, 1)),
        ("channel", 0, (2, 2, 4)),
        ("channel", 1, (2, 2, 3)),
    ],
)
def test_coupling_keeps_masked_entries_and_is_elementwise_elsewhere(mask, parity, shape):
    bijector = image_coupling(shape, transformers.affine(), mask=mask, parity=parity, **NETWORK)
    params, x = perturbed(bijector), image(shape)
    keep = (checkerboard_mask if mask == "checkerboard" else channel_mask)(shape, parity).reshape(-1)
    y, log_det = bijector.forward(params, x)
    flat_x, flat_y = np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)
    np.testing.assert_array_equal(flat_y[keep], flat_x[keep])
    assert np.all(flat_y[~keep] != flat_x[~keep])
    jac = jacobian(lambda v: bijector.forward(params, v)[0], x)
    np.testing.assert_array_equal(jac[keep], np.eye(x.size)[keep])  # kept rows: identity
    transformed = jac[np.ix_(~keep, ~keep)]
    np.testing.assert_allclose(transformed, np.diag(np.diag(transformed)), atol=1e-12)  # element-wise
    np.testing.assert_allclose(log_det, np.sum(np.log(np.abs(np.diag(transformed)))), rtol=1e-10)


def test_image_coupling_errors():
    with pytest.raises(ValueError, match="at least 2 channels"):
        image_coupling((4, 4, 1), transformers.affine(), mask="channel")
    with pytest.raises(ValueError, match="at least 2 channels"):
        glow_step((4, 4, 1))
    with pytest.raises(ValueError, match="'checkerboard' or 'channel'"):
        image_coupling((4, 4, 2), transformers.affine(), mask="stripes")
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        image_coupling((16, 2), transformers.affine())
    bijector = image_coupling((4, 4, 2), transformers.affine(), context_dim=3, **NETWORK)
    params = bijector.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected one event of shape \(4, 4, 2\)"):
        bijector.forward(params, jnp.zeros((4, 4, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match="needs a context"):
        bijector.forward(params, jnp.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="unconditional"):
        image_coupling((4, 4, 2), transformers.affine(), **NETWORK).forward(params, jnp.zeros((4, 4, 2)), jnp.zeros(3))


def test_resnet_cnn_shapes_zero_start_and_context():
    net = resnet_cnn((4, 4, 2), 6, hidden_channels=4, num_blocks=3, context_dim=2)
    params = net.init(jax.random.key(0))
    h = image((4, 4, 2))
    np.testing.assert_array_equal(net.apply(params, h, jnp.ones(2)), np.zeros((4, 4, 6)))
    blocks = sorted(name for name in params["params"] if name.startswith("ResidualBlock"))
    assert blocks == [f"ResidualBlock_{i}" for i in range(3)]
    params = perturbed(net)
    assert not np.allclose(net.apply(params, h, jnp.ones(2)), net.apply(params, h, -jnp.ones(2)))
    shallow = resnet_cnn((4, 4, 2), 3, hidden_channels=4, num_blocks=0)
    assert shallow.apply(shallow.init(jax.random.key(0)), h).shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        resnet_cnn((4, 4), 3)
    with pytest.raises(ValueError, match="resnet_cnn: context_dim must be None or a positive int, got 0"):
        resnet_cnn((4, 4, 2), 3, context_dim=0)


@pytest.mark.parametrize(
    "shape, levels, learned_prior, context_dim",
    [((4, 4, 1), 2, True, None), ((4, 8, 2), 1, False, 3)],  # the kit checks (4, 4, 2), 2 levels, no prior
)
def test_multiscale_starts_at_identity_and_its_log_det_matches_autodiff(shape, levels, learned_prior, context_dim):
    bijector = multiscale(
        shape, levels=levels, steps_per_level=2, learned_prior=learned_prior, context_dim=context_dim, **NETWORK
    )
    params, x = perturbed(bijector), image(shape)
    context = None if context_dim is None else jnp.arange(context_dim, dtype=x.dtype)
    forward = jax.jit(bijector.forward)
    fresh_y, fresh_log_det = forward(bijector.init(jax.random.key(0)), x, context)
    np.testing.assert_allclose(fresh_y, x, atol=1e-12)  # fresh layers are identities; each squeeze is undone
    np.testing.assert_allclose(fresh_log_det, 0.0, atol=1e-12)
    y, log_det = forward(params, x, context)
    z, inverse_log_det = jax.jit(bijector.inverse)(params, y, context)
    assert y.shape == x.shape and z.shape == x.shape
    np.testing.assert_allclose(z, x, atol=1e-10)
    autodiff_log_det = np.linalg.slogdet(jacobian(lambda v: forward(params, v, context)[0], x))[1]
    np.testing.assert_allclose(log_det, autodiff_log_det, rtol=1e-9)
    np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-12)
    if context_dim is not None:
        assert not np.allclose(y, forward(params, x, -context)[0])


def test_multiscale_factors_out_half_the_channels_at_each_level():
    """Level-2 params change the latent only in the half of level 1's squeezed channels that stays."""
    bijector = multiscale((4, 4, 1), levels=2, steps_per_level=2, **NETWORK)
    params, x = perturbed(bijector), image((4, 4, 1))
    other = (params[0], perturbed(bijector, seed=5)[1], *params[2:])  # params[1]: the next level, inside factor_out
    inverse = jax.jit(bijector.inverse)
    latent, other_latent = (reference_squeeze(np.asarray(inverse(p, x)[0])) for p in (params, other))
    np.testing.assert_array_equal(latent[..., 2:], other_latent[..., 2:])  # factored out at level 1
    assert not np.allclose(latent[..., :2], other_latent[..., :2])


def test_data_init_through_multiscale_standardises_every_latent_group():
    shape = (4, 4, 1)
    bijector = multiscale(shape, levels=2, steps_per_level=2, **NETWORK)
    scales = 3.0 + jnp.arange(16.0).reshape(4, 4, 1)  # far from standard, different per pixel
    data = 5.0 + scales * jax.random.normal(jax.random.key(2), (512, *shape))
    params, latent = jaxflow.initialize_from_data(bijector, bijector.init(jax.random.key(0)), data)
    np.testing.assert_allclose(latent, jax.vmap(bijector.inverse, (None, 0))(params, data)[0], atol=1e-10)
    level1 = np.stack([reference_squeeze(z) for z in np.asarray(latent)])  # (512, 2, 2, 4)
    level2 = np.stack([reference_squeeze(z) for z in level1[..., :2]])  # the kept half, squeezed again
    for group in (level1[..., 2:], level2):  # each group: channels that reach the base together
        np.testing.assert_allclose(group.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
        np.testing.assert_allclose(group.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_glow_step_data_init_standardises_the_input_channels():
    step = glow_step((2, 2, 3), **NETWORK)
    noise = jax.random.normal(jax.random.key(3), (256, 2, 2, 3))
    data = jnp.array([1.0, -2.0, 4.0]) + jnp.array([0.5, 2.0, 3.0]) * noise
    _, x = jaxflow.initialize_from_data(step, step.init(jax.random.key(0)), data)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_multiscale_rejects_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match=r"2\*\*2 = 4; got shape \(4, 6, 1\), which allows at most 1 level"):
        multiscale((4, 6, 1), levels=2, steps_per_level=1)
    with pytest.raises(ValueError, match="multiscale: levels must be a positive int"):
        multiscale((4, 4, 1), levels=0, steps_per_level=1)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        multiscale((4, 4), levels=1, steps_per_level=1)


def test_flow_with_multiscale_samples_and_scores_batches_of_images():
    shape = (4, 4, 1)
    flow = jaxflow.Flow(jaxflow.standard_normal(shape), multiscale(shape, levels=2, steps_per_level=2, **NETWORK))
    params = {"base": (), "bijector": perturbed(flow.bijector)}
    samples, log_q = jax.jit(lambda p, k: flow.sample_and_log_prob(p, k, (3, 2)))(params, jax.random.key(4))
    assert samples.shape == (3, 2, *shape) and log_q.shape == (3, 2)
    log_prob = jax.jit(flow.log_prob)(params, samples)
    np.testing.assert_allclose(log_prob, log_q, rtol=1e-9)
    x = samples[1, 0]  # independent reference: change of variables with an autodiff Jacobian
    z, _ = flow.bijector.inverse(params["bijector"], x)
    log_det = np.linalg.slogdet(jacobian(lambda v: flow.bijector.inverse(params["bijector"], v)[0], x))[1]
    expected = stats.norm.logpdf(np.asarray(z)).sum() + log_det
    np.testing.assert_allclose(log_prob[1, 0], expected, rtol=1e-9)
