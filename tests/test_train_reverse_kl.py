"""Reverse-KL training: ELBO, sticking the landing, IWAE, annealing, the fit loop and its safeguards."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxflow as jf
from jaxflow.testing import with_noisy_log_det
from jaxflow.train import reverse_kl

MEAN = np.array([1.0, -1.0])
COV = np.array([[1.0, 0.8], [0.8, 1.0]]) * 0.5
LOG_Z = float(np.log(2 * np.pi * np.sqrt(np.linalg.det(COV))))  # of gaussian_target below


def small_flow(bijector_wrapper=lambda b: b):
    coupling = jf.bijectors.affine_coupling(2, hidden=(16,))
    return jf.Flow(jf.standard_normal(2), bijector_wrapper(jf.stack(jf.chain(coupling, jf.bijectors.reverse()), 4)))


def affine_flow():
    """A flow that compiles fast, for tests of the training machinery rather than of learning."""
    return jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))


def gaussian_target(x):
    """Unnormalised N(MEAN, COV)."""
    d = x - MEAN
    return -0.5 * d @ jnp.linalg.solve(COV, d)


def banana_target(x):
    """A curved 2-D density: x1 ~ N(0, 1), x2 | x1 ~ N(x1^2 - 1, 0.5^2), unnormalised."""
    return -0.5 * x[0] ** 2 - 2.0 * (x[1] - x[0] ** 2 + 1.0) ** 2


def shifted_normal(shift):
    """Normalised N(shift, I) in 2-D."""
    return lambda x: -0.5 * jnp.sum((x - shift) ** 2) - jnp.log(2 * jnp.pi)


def test_elbo_loss_estimates_the_closed_form_kl():
    flow = affine_flow()  # the identity at init: q = N(0, I)
    shift = jnp.array([0.6, -0.3])
    num_samples = 20_000
    params = flow.init(jax.random.key(0))
    loss = reverse_kl.elbo_loss(params, flow, jax.random.key(1), shifted_normal(shift), num_samples)
    kl = 0.5 * float(shift @ shift)  # KL(N(0, I) || N(shift, I)); log q - log p has sd |shift|
    assert abs(float(loss) - kl) < 4 * np.sqrt(2 * kl / num_samples)


def test_iwae_bound_lies_between_the_elbo_and_the_evidence():
    flow = affine_flow()
    params, key, target = flow.init(jax.random.key(0)), jax.random.key(1), shifted_normal(jnp.array([1.0, 0.0]))
    elbo = reverse_kl.elbo_loss(params, flow, key, target, 512)
    np.testing.assert_allclose(reverse_kl.iwae_loss(params, flow, key, target, 512, num_importance=1), elbo, rtol=1e-6)
    losses = [float(reverse_kl.iwae_loss(params, flow, key, target, 512, num_importance=k)) for k in (4, 64, 512)]
    assert float(elbo) > losses[0] > losses[1] > losses[2] > -0.1  # -log Z = 0: the bound tightens towards it


def test_sticking_the_landing_gradient_vanishes_when_q_is_the_target():
    flow = affine_flow()
    params = flow.init(jax.random.key(0))  # q = N(0, I) = target

    def gradient_norm(stick_the_landing):
        grads = jax.grad(reverse_kl.elbo_loss)(
            params, flow, jax.random.key(1), shifted_normal(0.0), 64, stick_the_landing=stick_the_landing
        )
        return float(optax.global_norm(grads))

    assert gradient_norm(True) < 1e-5 < 1e-2 < gradient_norm(False)  # the score term alone is noise


def test_sticking_the_landing_hands_stochastic_log_dets_a_key():
    """The STL pass needs a key for a stochastic log-det (without one `log_prob` raises); its noise averages out."""
    target, num_samples = shifted_normal(jnp.array([0.6, -0.3])), 256
    noisy_flow = jf.Flow(jf.standard_normal(2), with_noisy_log_det(jf.bijectors.affine(2)))
    flows = {"exact": affine_flow(), "noisy": noisy_flow}
    params = affine_flow().init(jax.random.key(0))

    def loss_and_gradient(name):
        return jax.value_and_grad(reverse_kl.elbo_loss)(
            params, flows[name], jax.random.key(1), target, num_samples, stick_the_landing=True
        )

    (exact, exact_grads), (noisy, noisy_grads) = loss_and_gradient("exact"), loss_and_gradient("noisy")
    assert noisy != exact  # the noise is there, and averages out over the draws
    np.testing.assert_allclose(noisy, exact, atol=5 * 0.1 / np.sqrt(num_samples))
    jax.tree.map(np.testing.assert_allclose, noisy_grads, exact_grads)  # the noise does not depend on the params


def test_annealing_schedule_rises_geometrically_to_one():
    schedule = reverse_kl.annealing_schedule(100, initial_beta=0.01)
    steps = np.arange(0, 201, 25)
    expected = np.minimum(0.01 ** (1 - steps / 100), 1.0)
    np.testing.assert_allclose(jax.vmap(schedule)(steps), expected, rtol=1e-5)
    assert float(reverse_kl.annealing_schedule(0)(7)) == 1.0


@pytest.mark.parametrize(
    "options",
    [dict(), dict(stick_the_landing=True), dict(objective="iwae", num_importance=4)],
    ids=["elbo", "stl", "iwae"],
)
def test_fit_lowers_the_loss_and_finds_the_gaussian_moments(options):
    flow = small_flow()
    params, history = reverse_kl.fit(
        jax.random.key(0), flow, flow.init(jax.random.key(0)), gaussian_target, num_steps=1000,
        optimizer=optax.adam(3e-3), progress=False, **options,
    )
    assert history["loss"].shape == (1000,) and history["num_skipped"] == 0
    assert history["loss"][-100:].mean() < history["loss"][:20].mean() - 0.5
    assert history["loss"][-100:].mean() < -LOG_Z + 0.1  # -ELBO >= -log Z, with equality at q = p
    x = np.asarray(flow.sample(params, jax.random.key(1), (20_000,)))
    np.testing.assert_allclose(x.mean(axis=0), MEAN, atol=0.15)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.15)


def test_fit_lowers_the_loss_on_a_banana_with_annealing():
    flow = small_flow()
    _, history = reverse_kl.fit(
        jax.random.key(0), flow, flow.init(jax.random.key(0)), banana_target, num_steps=600, anneal_steps=200,
        optimizer=optax.adam(3e-3), progress=False,
    )
    np.testing.assert_allclose(history["beta"][[0, 200, 599]], [0.01, 1.0, 1.0], rtol=1e-5)
    log_z = np.log(2 * np.pi * 0.5)  # of banana_target
    assert history["loss"][-100:].mean() < -log_z + 0.3


def test_each_steps_loss_targets_the_annealed_density():
    # q = N(0, I) held fixed (learning rate 0), log p~ = -|x - m|^2 / 2: the loss at beta is
    # E_q[log q] - beta E_q[log p~] = -(1 + log 2 pi) + beta (2 + |m|^2) / 2, estimated from 4096 draws.
    flow, shift = affine_flow(), jnp.array([1.0, -2.0])
    _, history = reverse_kl.fit(
        jax.random.key(0), flow, flow.init(jax.random.key(0)), lambda x: -0.5 * jnp.sum((x - shift) ** 2),
        num_samples=4096, num_steps=40, anneal_steps=30, optimizer=optax.sgd(0.0), chunk_size=20, progress=False,
    )
    beta = history["beta"]
    expected = -(1 + np.log(2 * np.pi)) + beta * (2 + float(shift @ shift)) / 2
    # One draw's term is (beta - 1) |x|^2 / 2 - beta m.x + const: variance (beta - 1)^2 + beta^2 |m|^2 in 2-D.
    standard_error = np.sqrt((beta - 1) ** 2 + beta**2 * float(shift @ shift)) / np.sqrt(4096)
    assert np.all(np.abs(history["loss"] - expected) < 5 * standard_error)
    assert beta[0] < 0.02 and beta[-1] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "options", [dict(), dict(stick_the_landing=True), dict(objective="iwae")], ids=["elbo", "stl", "iwae"]
)
def test_long_fit_recovers_the_gaussian_closely(options):
    flow = small_flow()
    params, _ = reverse_kl.fit(
        jax.random.key(0), flow, flow.init(jax.random.key(0)), gaussian_target, num_steps=6000, num_samples=128,
        optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, 6000)), progress=False, **options,
    )
    x = np.asarray(flow.sample(params, jax.random.key(1), (50_000,)))
    np.testing.assert_allclose(x.mean(axis=0), MEAN, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.05)


def _target_traces(num_chunks):
    """How often reverse_kl.fit traces the target in `num_chunks` chunks of 10 steps."""
    counter = []

    def target(x):
        counter.append(1)
        return gaussian_target(x)

    reverse_kl.fit(jax.random.key(0), affine_flow(), affine_flow().init(jax.random.key(0)), target,
                   num_steps=10 * num_chunks, chunk_size=10, progress=False)
    return len(counter)


def test_more_chunks_do_not_mean_more_compilations():
    assert _target_traces(2) == _target_traces(5) > 0


def test_nonfinite_steps_are_skipped_or_raise():
    flow = affine_flow()
    params = flow.init(jax.random.key(0))

    def sometimes_nan(x):  # NaN, and NaN gradients, where x[0] > 3: about 8% of the steps sample there
        return -0.5 * x @ x + 0.0 * jnp.sqrt(3.0 - x[0])

    with pytest.warns(RuntimeWarning, match="of the 200 steps were skipped .*the first at step .*a biased subset"):
        fitted, history = reverse_kl.fit(jax.random.key(0), flow, params, sometimes_nan, num_steps=200,
                                         progress=False)
    assert 0 < history["num_skipped"] < 100
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(fitted))
    with pytest.raises(FloatingPointError, match="step 0"):
        reverse_kl.fit(jax.random.key(0), flow, params, lambda x: jnp.nan * x[0], num_steps=20, chunk_size=10,
                       on_nonfinite="raise", progress=False)
    with pytest.warns(RuntimeWarning, match="every one of the 20 steps was skipped") as warned:
        reverse_kl.fit(jax.random.key(0), flow, params, lambda x: jnp.nan * x[0], num_steps=20, chunk_size=10,
                       progress=False)
    assert [w.filename for w in warned if "skipped" in str(w.message)] == [__file__]  # the call to the fit


def test_positive_parameters_through_an_exp_bijector():
    flow = jf.Flow(jf.standard_normal(2), jf.chain(jf.bijectors.affine(2), jf.bijectors.exp()))

    def log_normal(x):  # LogNormal(1, 0.5^2) per coordinate, a density on (0, inf)
        return jnp.sum(-jnp.log(x) - 2.0 * (jnp.log(x) - 1.0) ** 2)

    params, _ = reverse_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), log_normal, num_steps=400,
                               optimizer=optax.adam(3e-2), progress=False)
    x = np.asarray(flow.sample(params, jax.random.key(1), (20_000,)))
    assert (x > 0).all()
    np.testing.assert_allclose(np.log(x).mean(axis=0), 1.0, atol=0.05)
    np.testing.assert_allclose(np.log(x).std(axis=0), 0.5, atol=0.05)


@pytest.mark.parametrize(
    "target, options, message",
    [
        (gaussian_target, dict(objective="kl"), "objective"),
        (gaussian_target, dict(objective="iwae", stick_the_landing=True), "stick_the_landing"),
        (lambda x: x, dict(), "to a scalar"),
        ("not a function", dict(), "function"),
    ],
)
def test_bad_options_are_refused(target, options, message):
    flow = affine_flow()
    with pytest.raises((ValueError, TypeError), match=message):
        reverse_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), target, progress=False, **options)


def test_annealing_past_the_last_step_warns():
    """With anneal_steps 300 of 30 steps the fit ended on p~^0.016 without a word."""
    flow = affine_flow()
    with pytest.warns(RuntimeWarning, match="the last of the 30 steps targets p~\\^beta with beta = 0.0156"):
        reverse_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), gaussian_target, num_steps=30,
                       anneal_steps=300, progress=False)


def test_iwae_needs_whole_groups():
    flow = affine_flow()
    with pytest.raises(ValueError, match="multiple of num_importance"):
        reverse_kl.iwae_loss(flow.init(jax.random.key(0)), flow, jax.random.key(0), gaussian_target, 10,
                             num_importance=4)
