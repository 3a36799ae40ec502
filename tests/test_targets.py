"""Target densities against scipy/numpy implementations, and against their gold-standard draws."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxflow import targets

DATA = targets.DATA_DIR
needs_data = pytest.mark.skipif(not targets.REFERENCE_DRAWS.is_file(), reason="shared/data/posteriors is missing")


def funnel_reference(point):
    v, x = point[0], point[1:]
    return stats.norm.logpdf(v, 0, 3) + stats.norm.logpdf(x, 0, np.exp(v / 2)).sum()


def banana_reference(point, b=0.1):
    x1, x2 = point
    return stats.norm.logpdf(x1, 0, 10) + stats.norm.logpdf(x2, b * (x1**2 - 100), 1)


def logistic_regression_reference(point):
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    features, labels = load_breast_cancer(return_X_y=True)
    features = StandardScaler().fit_transform(features)
    logits = point[0] + features @ point[1:]
    # log p(label | logit) without forming the probability, which rounds to 0 or 1 at large |logit|.
    log_likelihood = -np.logaddexp(0.0, np.where(labels == 1, -logits, logits)).sum()
    return stats.norm.logpdf(point).sum() + log_likelihood


def eight_schools_reference(point):
    data = json.loads((DATA / "posteriordb_eight_schools.json").read_text())
    theta, mu, log_tau = point[:8], point[8], point[9]
    tau = np.exp(log_tau)
    log_prior = stats.norm.logpdf(mu, 0, 5) + stats.halfcauchy.logpdf(tau, scale=5)
    log_prior += stats.norm.logpdf(theta, mu, tau).sum()
    return log_prior + stats.norm.logpdf(data["y"], theta, data["sigma"]).sum() + log_tau  # + log |d tau / d log tau|


def ark_reference(point):
    data = json.loads((DATA / "posteriordb_arK.json").read_text())
    y, order = np.asarray(data["y"]), data["K"]
    alpha, beta, sigma = point[0], point[1 : order + 1], np.exp(point[order + 1])
    log_likelihood = sum(
        stats.norm.logpdf(y[t], alpha + sum(beta[k - 1] * y[t - k] for k in range(1, order + 1)), sigma)
        for t in range(order, len(y))
    )
    log_prior = stats.norm.logpdf(point[: order + 1], 0, 10).sum() + stats.halfcauchy.logpdf(sigma, scale=2.5)
    return log_prior + log_likelihood + np.log(sigma)


CASES = {
    "neal_funnel": (targets.neal_funnel, funnel_reference),
    "banana": (targets.banana, banana_reference),
    "logreg_breast_cancer": (targets.logistic_regression_breast_cancer, logistic_regression_reference),
    "eight_schools_centered": (targets.eight_schools_centered, eight_schools_reference),
    "arK": (targets.ark, ark_reference),
}
# posteriordb models read their data from shared/data/posteriors.
NAMES = [pytest.param(name, marks=needs_data) if name in ("eight_schools_centered", "arK") else name for name in CASES]


def random_points(target, count=4, seed=0):
    """Points spread around the posterior: reference draws plus noise, or standard normals."""
    rng = np.random.default_rng(seed)
    if target.reference_key is None or not targets.REFERENCE_DRAWS.is_file():
        return rng.standard_normal((count, target.dim))
    draws = targets.reference_draws(target.reference_key)
    return draws[rng.choice(len(draws), count)] + 0.5 * draws.std(axis=0) * rng.standard_normal((count, target.dim))


@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
def test_log_density_matches_scipy(name):
    make_target, reference = CASES[name]
    target = make_target()
    points = random_points(target)
    values = jax.jit(jax.vmap(target.log_density))(jnp.asarray(points))
    np.testing.assert_allclose(values, [reference(p) for p in points], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_log_density_in_float32_stays_float32_and_close(name):
    make_target, reference = CASES[name]
    target = make_target()
    points = random_points(target)
    values = jax.vmap(target.log_density)(jnp.asarray(points, jnp.float32))
    assert values.dtype == jnp.float32
    np.testing.assert_allclose(values, [reference(p) for p in points], rtol=2e-4, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_is_finite(name):
    target = CASES[name][0]()
    gradients = jax.vmap(jax.grad(target.log_density))(jnp.asarray(random_points(target, 16, seed=1), jnp.float32))
    assert gradients.shape == (16, target.dim) and np.isfinite(gradients).all()


def test_other_sizes_have_no_reference():
    funnel, banana = targets.neal_funnel(5), targets.banana(0.05)
    assert (funnel.dim, funnel.reference_key, len(funnel.labels)) == (5, None, 5)
    assert banana.reference_key is None
    point = np.array([1.5, -0.5, 0.3, 2.0, -1.0])
    np.testing.assert_allclose(funnel.log_density(jnp.asarray(point)), funnel_reference(point), rtol=1e-5)
    np.testing.assert_allclose(banana.log_density(jnp.array([3.0, -4.0])), banana_reference([3.0, -4.0], 0.05),
                               rtol=1e-5)


def test_normalised_targets_integrate_to_one():
    grid = np.linspace(-60, 60, 1201)
    x1, x2 = np.meshgrid(grid, np.linspace(-30, 400, 4301), indexing="ij")
    density = np.exp(jax.vmap(targets.banana().log_density)(jnp.stack([x1.ravel(), x2.ravel()], 1)))
    assert abs(density.sum() * (grid[1] - grid[0]) * 0.1 - 1) < 1e-3


@pytest.mark.parametrize(
    "make_target, point, message",
    [
        (targets.neal_funnel, jnp.zeros(9), r"shape \(10,\) as point, got shape \(9,\)\. A target's log density"),
        (targets.banana, jnp.zeros(2, jnp.int32), "floating"),
    ],
)
def test_bad_points_are_refused(make_target, point, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_target().log_density(point)


def test_funnel_needs_two_coordinates():
    with pytest.raises(ValueError, match="dim >= 2"):
        targets.neal_funnel(1)
    with pytest.raises(ValueError, match=r"a whole dim >= 2 \(v and at least one x\), got 2.5"):  # was truncated to 2
        targets.neal_funnel(2.5)
    assert targets.neal_funnel(np.float64(3.0)).dim == 3


EXPECTED_SHAPES = {
    "neal_funnel": (20000, 10), "banana": (20000, 2), "logreg_breast_cancer": (10000, 31),
    "eight_schools_centered": (10000, 10), "arK": (10000, 7), "gp_pois_regr": (10000, 13),
}


@needs_data
@pytest.mark.parametrize("key, shape", EXPECTED_SHAPES.items())
def test_reference_draws_load(key, shape):
    draws = targets.reference_draws(key)
    assert draws.shape == shape and draws.dtype == np.float64 and np.isfinite(draws).all()


@pytest.mark.float64
@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_mean_score_vanishes_on_the_reference_draws(name):
    """E_p[grad log p] = 0: the draws and the density agree, Jacobian terms and coordinate order included."""
    target = CASES[name][0]()
    draws = targets.reference_draws(target.reference_key)
    assert draws.shape[1] == target.dim == len(target.labels)
    scores = np.asarray(jax.jit(jax.vmap(jax.grad(target.log_density)))(jnp.asarray(draws)))
    standard_error = scores.std(axis=0) / np.sqrt(len(draws) / 2)  # effective size: half, for MCMC draws
    assert (np.abs(scores.mean(axis=0)) < 4.5 * standard_error).all()  # a dropped log-Jacobian fails this


@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_reference_draws_are_denser_than_shifted_draws(name):
    target = CASES[name][0]()
    draws = targets.reference_draws(target.reference_key)[:2000]
    log_density = jax.jit(jax.vmap(target.log_density))
    shifted = draws + 2 * draws.std(axis=0)
    mean_log_density = lambda x: np.mean(log_density(jnp.asarray(x, jnp.float32)))  # noqa: E731
    assert mean_log_density(draws) > mean_log_density(shifted)


def test_missing_archive_and_unknown_names_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="reference draws not found"):
        targets.reference_draws("banana", path=tmp_path / "nothing.npz")
    np.savez(tmp_path / "draws.npz", banana=np.zeros((3, 2)), meta=np.array("text"))
    with pytest.raises(KeyError, match=r"available: \['banana'\]"):
        targets.reference_draws("funnel", path=tmp_path / "draws.npz")


def variational_fit(target, loc, scale, *, steps, anneal_steps):
    """An IAF with a final affine map started at (loc, scale), fitted by reverse KL with sticking the landing."""
    import optax

    import jaxflow as jf
    from jaxflow import flows
    from jaxflow.train import reverse_kl

    flow = jf.Flow(jf.standard_normal(target.dim),
                   jf.chain(flows.iaf(target.dim, layers=4, hidden=(64, 64)).bijector, jf.bijectors.affine(target.dim)))
    params = flow.init(jax.random.key(0))
    params = {**params, "bijector": (params["bijector"][0], jf.bijectors.affine_params(loc, scale))}
    params, _ = reverse_kl.fit(
        jax.random.key(1), flow, params, target.log_density, num_samples=256, num_steps=steps,
        optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05)), anneal_steps=anneal_steps,
        stick_the_landing=True, clip_norm=100.0, progress=False,
    )
    return flow, params


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize(
    "make_target, loc, scale, steps, anneal_steps",
    [
        (targets.banana, [0.0, -10.0], [10.0, 1.0], 4000, 2000),  # the Laplace approximation, by hand
        (targets.neal_funnel, np.zeros(10), np.ones(10), 3000, 0),
    ],
    ids=["banana", "neal_funnel"],
)
def test_reverse_kl_recovers_the_reference_posterior(make_target, loc, scale, steps, anneal_steps):
    from jaxflow.train import diagnostics

    target = make_target()
    flow, params = variational_fit(target, loc, scale, steps=steps, anneal_steps=anneal_steps)
    diag = diagnostics.importance_diagnostics(jax.random.key(2), flow, params, target.log_density, 20_000)
    assert float(diag.k_hat) < 0.7 and float(diag.ess) > 0.5
    draws = np.asarray(flow.sample(params, jax.random.key(3), (20_000,)))
    reference = targets.reference_draws(target.reference_key)
    mean_error = (draws.mean(0) - reference.mean(0)) / reference.std(0)
    assert np.abs(mean_error).max() < 0.1


@pytest.mark.float64
def test_laplace_approximation_of_a_correlated_gaussian_is_its_mean_and_marginal_sds():
    mean = np.array([1.0, -2.0, 0.5])
    factor = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.2, 0.5]])
    covariance = factor @ factor.T
    precision = jnp.asarray(np.linalg.inv(covariance))

    def log_density(x):
        centred = x - mean
        return -0.5 * centred @ precision @ centred

    mode, sd = targets.laplace_approximation(targets.Target("gaussian", 3, log_density, None))
    np.testing.assert_allclose(mode, mean, atol=1e-8)
    np.testing.assert_allclose(sd, np.sqrt(np.diag(covariance)), rtol=1e-8)


def test_laplace_approximation_of_a_density_without_a_mode_is_refused():
    ramp = targets.Target("ramp", 2, lambda x: jnp.sum(x), None)
    with pytest.raises(ValueError, match="ramp has no mode with a positive-definite Hessian"):
        targets.laplace_approximation(ramp)


def test_laplace_approximation_refuses_a_saddle():
    """L-BFGS from 0 never moves off the saddle between two modes; the inverse Hessian's diagonal is positive there."""
    centre = 2.0 * jnp.ones(3) / jnp.sqrt(3.0)

    def two_modes(x):
        return jnp.logaddexp(-0.5 * jnp.sum((x - centre) ** 2), -0.5 * jnp.sum((x + centre) ** 2))

    message = r"stopped at \[0.0, 0.0, 0.0\], where the Hessian of -log_density has eigenvalues -3, 1, 1"
    with pytest.raises(ValueError, match=message):
        targets.laplace_approximation(targets.Target("two_modes", 3, two_modes, None))
