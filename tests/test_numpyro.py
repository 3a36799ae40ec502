"""jaxflow <-> numpyro: flows as numpyro distributions, and AutoFlowGuide against exact posteriors.

The guide is checked on a model whose posterior is known in closed form: a Bayesian
linear regression with known noise (Gaussian posterior) next to a Gamma-Poisson
rate (Gamma posterior, a constrained site), and against numpyro's AutoIAFNormal
trained on the same model.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoIAFNormal
from numpyro.infer.reparam import NeuTraReparam
from numpyro.infer.util import log_density
from scipy import stats

import jaxflow as jf
from jaxflow import flows
from jaxflow.interop.numpyro import AutoFlowGuide, BijectorTransform, FlowDistribution
from jaxflow.testing import perturbed_params

DIM = 3
NUM_DRAWS = 20_000
MEAN_TOL = 0.1  # |mean error| / exact posterior sd
SD_TOL = 0.1  # |sd / exact sd - 1|
IAF_MEAN_TOL = 0.15  # |mean(jaxflow) - mean(AutoIAFNormal)| / exact sd
IAF_SD_TOL = 0.1  # |sd(jaxflow) / sd(AutoIAFNormal) - 1|


def _close(actual, expected, tol=2e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


@functools.cache
def _flow(conditional=False):
    """A small RealNVP, and params moved off the identity (cached: Flax init is slow to trace)."""
    flow = flows.realnvp(DIM, layers=2, hidden=(8,), context_dim=2 if conditional else None)
    params = {"base": (), "bijector": perturbed_params(flow.bijector, jax.random.key(0), 0.3)}
    return flow, params


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_log_prob_of_an_affine_flow_is_numpyros_normal():
    flow = jf.Flow(jf.standard_normal(DIM), jf.bijectors.affine(DIM))
    shift, log_scale = jnp.array([1.0, -2.0, 0.5]), jnp.array([0.3, -0.7, 0.0])
    d = FlowDistribution(flow, {"base": (), "bijector": {"shift": shift, "log_scale": log_scale}})
    x = _normal(0, (2, 4, DIM))
    expected = dist.Normal(shift, jnp.exp(log_scale)).to_event(1).log_prob(x)
    _close(d.log_prob(x), expected)
    _close(jax.jit(lambda d, x: d.log_prob(x))(d, x), expected)  # a pytree: passes through jit
    draws = d.sample(jax.random.key(1), (NUM_DRAWS,))
    _close(draws.mean(0), shift, tol=0.05)
    _close(draws.std(0), jnp.exp(log_scale), tol=0.05)


def test_log_prob_and_samples_agree_with_the_flow():
    flow, params = _flow()
    d = FlowDistribution(flow, params)
    assert (d.batch_shape, d.event_shape, d.support.event_dim) == ((), (DIM,), 1)
    x = _normal(0, (2, 4, DIM))
    _close(d.log_prob(x), flow.log_prob(params, x))
    draws, (log_q,) = d.sample_with_intermediates(jax.random.key(1), (5, 2))
    assert draws.shape == (5, 2, DIM) and log_q.shape == (5, 2)
    _close(log_q, d.log_prob(draws), tol=1e-4)  # forward-pass density == inverse-pass density
    _close(d.log_prob(draws, [log_q + 1.0]), log_q + 1.0)  # the draws' own density is read, not recomputed
    assert d.sample(jax.random.key(2)).shape == (DIM,)


def test_sample_site_in_a_model_and_log_density():
    flow, params = _flow()
    data = _normal(1, (5, DIM))

    def model():
        z = numpyro.sample("z", FlowDistribution(flow, params))
        with numpyro.plate("n", 5):
            numpyro.sample("x", FlowDistribution(flow, params), obs=data)
        numpyro.sample("y", dist.Normal(z.sum(), 1.0), obs=0.5)

    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace()
    z = trace["z"]["value"]
    assert z.shape == (DIM,) and isinstance(trace["z"]["fn"], FlowDistribution)
    log_joint, _ = log_density(model, (), {}, {"z": z})
    log_likelihood = stats.norm.logpdf(0.5, float(z.sum()), 1.0)
    expected = flow.log_prob(params, z) + flow.log_prob(params, data).sum() + log_likelihood
    _close(log_joint, expected, tol=1e-4)


def test_conditional_flow_with_a_batch_of_contexts():
    flow, params = _flow(conditional=True)
    context = _normal(2, (4, 2))
    d = FlowDistribution(flow, params, context)
    assert d.batch_shape == (4,)
    draws = d.sample(jax.random.key(0), (3,))
    assert draws.shape == (3, 4, DIM)
    expected = flow.log_prob(params, draws, jnp.broadcast_to(context, (3, 4, 2)))
    _close(d.log_prob(draws), expected, tol=1e-4)
    _close(d.log_prob(draws[0]), expected[0], tol=1e-4)

    def likelihood():
        with numpyro.plate("n", 4):
            numpyro.sample("x", FlowDistribution(flow, params, context), obs=draws[0])

    _close(log_density(likelihood, (), {}, {})[0], expected[0].sum(), tol=1e-4)


def test_bad_inputs_raise_clear_errors():
    flow, params = _flow()
    with pytest.raises(TypeError, match="jaxflow Flow"):
        FlowDistribution(flow.bijector, params)
    with pytest.raises(ValueError, match="trailing event shape"):
        FlowDistribution(flow, params).log_prob(jnp.zeros((4, DIM + 1)))
    with pytest.raises(ValueError, match="unconditional"):
        FlowDistribution(flow, params, jnp.zeros(2))
    with pytest.raises(ValueError, match="conditional"):
        FlowDistribution(_flow(conditional=True)[0], params)
    residual = flows.residual_flow(DIM, layers=1, hidden=(4,), log_det="russian_roulette")
    with pytest.raises(ValueError, match=r"estimates log-dets stochastically: pass key=\.\.\. to FlowDistribution"):
        FlowDistribution(residual, residual.init(jax.random.key(0))).log_prob(jnp.zeros(DIM))
    with pytest.raises(TypeError, match="jaxflow Flow"):
        AutoFlowGuide(_conjugate_model, flow="realnvp")
    wrong_size = jf.Flow(jf.standard_normal(5), jf.bijectors.affine(5))
    with pytest.raises(ValueError, match=r"3 unconstrained latent dimensions.*event shape \(3,\); got \(5,\)"):
        numpyro.handlers.seed(AutoFlowGuide(_conjugate_model, wrong_size), 0)(*_DATA)


# A model with a closed-form posterior: w | y ~ Gaussian, rate | counts ~ Gamma.
_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((20, 2))
_DATA = (_X, _X @ np.array([0.5, -1.0]) + _RNG.standard_normal(20), _RNG.poisson(3.0, size=10))
_PRIOR_SD, _NOISE_SD, _GAMMA_SHAPE, _GAMMA_RATE = 1.0, 1.0, 2.0, 1.0


def _conjugate_model(x, y, counts):
    w = numpyro.sample("w", dist.Normal(0.0, _PRIOR_SD).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(x @ w, _NOISE_SD), obs=y)
    rate = numpyro.sample("rate", dist.Gamma(_GAMMA_SHAPE, _GAMMA_RATE))
    with numpyro.plate("counts", len(counts)):
        numpyro.sample("k", dist.Poisson(rate), obs=counts)


def _exact_posterior():
    """Means and sds of (w1, w2, rate), and the rate's posterior Gamma."""
    x, y, counts = _DATA
    cov = np.linalg.inv(x.T @ x / _NOISE_SD**2 + np.eye(2) / _PRIOR_SD**2)
    rate = stats.gamma(_GAMMA_SHAPE + counts.sum(), scale=1.0 / (_GAMMA_RATE + len(counts)))
    mean = np.r_[cov @ x.T @ y / _NOISE_SD**2, rate.mean()]
    return mean, np.r_[np.sqrt(np.diag(cov)), rate.std()], rate


@functools.cache
def _fit(kind):
    """Trains a guide on the conjugate model; returns (guide, params, draws of shape (NUM_DRAWS, 3))."""
    if kind == "jaxflow":
        guide = AutoFlowGuide(_conjugate_model, lambda dim: flows.realnvp(dim, layers=4, hidden=(16, 16)))
    else:
        guide = AutoIAFNormal(_conjugate_model, hidden_dims=[16, 16])
    optimizer = optax.adam(optax.cosine_decay_schedule(5e-3, 2000, alpha=0.02))
    svi = SVI(_conjugate_model, guide, optimizer, Trace_ELBO(num_particles=8))
    params = svi.run(jax.random.key(0), 2000, *_DATA, progress_bar=False).params
    draws = guide.sample_posterior(jax.random.key(1), params, sample_shape=(NUM_DRAWS,))
    return guide, params, np.column_stack([draws["w"], draws["rate"]])


def test_guide_matches_the_exact_posterior():
    exact_mean, exact_sd, _ = _exact_posterior()
    draws = _fit("jaxflow")[2]
    np.testing.assert_array_less(np.abs(draws.mean(0) - exact_mean) / exact_sd, MEAN_TOL)
    np.testing.assert_array_less(np.abs(draws.std(0) / exact_sd - 1), SD_TOL)


def test_guide_matches_auto_iaf_normal():
    _, exact_sd, _ = _exact_posterior()
    ours, theirs = _fit("jaxflow")[2], _fit("iaf")[2]
    np.testing.assert_array_less(np.abs(ours.mean(0) - theirs.mean(0)) / exact_sd, IAF_MEAN_TOL)
    np.testing.assert_array_less(np.abs(ours.std(0) / theirs.std(0) - 1), IAF_SD_TOL)


def test_constrained_site_gets_constrained_draws_and_exact_quantiles():
    guide, params, draws = _fit("jaxflow")
    _, exact_sd, exact_rate = _exact_posterior()
    assert np.all(draws[:, 2] > 0)
    levels = np.array([0.1, 0.5, 0.9])
    quantiles = guide.quantiles(params, levels, num_samples=NUM_DRAWS)
    assert quantiles["w"].shape == (3, 2) and quantiles["rate"].shape == (3,)
    np.testing.assert_array_less(np.abs(quantiles["rate"] - exact_rate.ppf(levels)) / exact_sd[2], MEAN_TOL)
    assert guide.median(params)["rate"].shape == ()


def test_get_posterior_equals_base_pushed_through_get_transform():
    guide, params, _ = _fit("jaxflow")
    posterior = guide.get_posterior(params)
    pushed = dist.TransformedDistribution(guide.get_base_dist(), guide.get_transform(params))
    z = posterior.sample(jax.random.key(2), (6,))
    _close(pushed.log_prob(z), posterior.log_prob(z), tol=1e-4)
    transform = guide.get_transform(params)
    _close(transform(transform.inv(z)), z, tol=1e-4)
    assert isinstance(transform, BijectorTransform)


@pytest.mark.slow
def test_neutra_mcmc_with_the_trained_guide():
    guide, params, _ = _fit("jaxflow")
    exact_mean, exact_sd, _ = _exact_posterior()
    model = NeuTraReparam(guide, params).reparam(_conjugate_model)
    mcmc = MCMC(NUTS(model), num_warmup=300, num_samples=1000, progress_bar=False)
    mcmc.run(jax.random.key(3), *_DATA)
    samples = mcmc.get_samples()
    draws = np.column_stack([samples["w"], samples["rate"]])
    np.testing.assert_array_less(np.abs(draws.mean(0) - exact_mean) / exact_sd, 0.15)
