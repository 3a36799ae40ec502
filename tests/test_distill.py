"""Distillation: the KL(student || teacher) loss, its fit loop and its safeguards."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import jaxflow as jf
from jaxflow import flows
from jaxflow.testing import perturbed_params, with_noisy_log_det
from jaxflow.train import distill

MATRIX = np.array([[1.0, 0.0], [0.9, 0.6]])


def gaussian_student():
    """x = exp(log_scale) * z + shift: N(shift, diag(exp(2 log_scale)))."""
    return jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))


def gaussian_teacher():
    """x = exp(log_scale) * (M z) + shift: a correlated Gaussian."""
    return jf.Flow(jf.standard_normal(2), jf.chain(jf.bijectors.fixed_linear(MATRIX), jf.bijectors.affine(2)))


STUDENT_PARAMS = {"base": (), "bijector": {"shift": jnp.array([0.5, -1.0]), "log_scale": jnp.array([0.2, -0.4])}}
TEACHER_PARAMS = {"base": (), "bijector": ((), {"shift": jnp.array([0.0, 0.3]), "log_scale": jnp.array([0.1, 0.3])})}


def gaussian_moments():
    """(mean, covariance) of the student and of the teacher, written out by hand."""
    student = STUDENT_PARAMS["bijector"]
    teacher = TEACHER_PARAMS["bijector"][1]
    student_cov = np.diag(np.exp(2 * np.asarray(student["log_scale"])))
    teacher_scale = np.diag(np.exp(np.asarray(teacher["log_scale"])))
    teacher_cov = teacher_scale @ MATRIX @ MATRIX.T @ teacher_scale
    return (np.asarray(student["shift"]), student_cov), (np.asarray(teacher["shift"]), teacher_cov)


def test_loss_estimates_the_closed_form_kl_of_two_gaussians():
    (m1, s1), (m2, s2) = gaussian_moments()
    precision = np.linalg.inv(s2)
    log_det_ratio = np.log(np.linalg.det(s2) / np.linalg.det(s1))
    kl = 0.5 * (np.trace(precision @ s1) + (m2 - m1) @ precision @ (m2 - m1) - 2 + log_det_ratio)
    x = np.random.default_rng(0).multivariate_normal(m1, s1, 20_000)  # the estimator's spread, from scipy
    log_ratios = stats.multivariate_normal(m1, s1).logpdf(x) - stats.multivariate_normal(m2, s2).logpdf(x)
    np.testing.assert_allclose(log_ratios.mean(), kl, atol=4 * log_ratios.std() / np.sqrt(len(x)))

    num_samples = 20_000
    estimate = distill.loss(STUDENT_PARAMS, gaussian_student(), gaussian_teacher(), TEACHER_PARAMS,
                            jax.random.key(1), num_samples)
    np.testing.assert_allclose(float(estimate), kl, atol=4 * log_ratios.std() / np.sqrt(num_samples))


def test_loss_is_zero_and_sticking_the_landing_gradient_vanishes_for_a_copy_of_the_teacher():
    teacher = gaussian_teacher()

    def loss_and_gradient_norm(stick_the_landing):
        loss, grads = jax.value_and_grad(distill.loss)(TEACHER_PARAMS, teacher, teacher, TEACHER_PARAMS,
                                                       jax.random.key(1), 64, stick_the_landing=stick_the_landing)
        return float(loss), float(optax.global_norm(grads))

    loss, stl_norm = loss_and_gradient_norm(True)
    assert abs(loss) < 1e-5
    assert stl_norm < 1e-5 < 1e-2 < loss_and_gradient_norm(False)[1]  # the score term alone is noise


def test_sticking_the_landing_hands_a_stochastic_student_a_key():
    """The STL pass needs a key for a stochastic log-det (without one `log_prob` raises); its noise averages out."""
    noisy_student = jf.Flow(jf.standard_normal(2), with_noisy_log_det(jf.bijectors.affine(2)))
    teacher, num_samples = gaussian_teacher(), 256

    def loss(student):
        return distill.loss(STUDENT_PARAMS, student, teacher, TEACHER_PARAMS, jax.random.key(1), num_samples,
                            stick_the_landing=True)

    noisy, exact = loss(noisy_student), loss(gaussian_student())
    assert noisy != exact
    np.testing.assert_allclose(noisy, exact, atol=5 * 0.1 / np.sqrt(num_samples))


def test_fit_brings_an_iaf_student_to_a_maf_teacher():
    teacher = flows.maf(2, layers=2, hidden=(16,))
    # Perturbed at scale 0.3 the teacher's difficulty varies wildly with the draw (initial KL 0.1 to
    # 200 over six seeds). At 0.2 and 600 steps, each of seeds 0-5 ends 32x-190x below its start
    # (initial KL 0.07-2.2) and under 0.02, so the test does not hang on one lucky draw.
    teacher_params = perturbed_params(teacher, jax.random.key(0), 0.2)
    student = flows.iaf(2, layers=2, hidden=(16,))
    params, history = distill.fit(jax.random.key(2), student, student.init(jax.random.key(1)), teacher,
                                  teacher_params, num_steps=600, optimizer=optax.adam(3e-3), progress=False)
    assert history["loss"].shape == (600,) and history["num_skipped"] == 0
    start, end = history["loss"][:10].mean(), history["loss"][-50:].mean()
    assert end < min(0.03, start / 20)
    student_draws = np.asarray(student.sample(params, jax.random.key(3), (20_000,)))
    teacher_draws = np.asarray(teacher.sample(teacher_params, jax.random.key(4), (20_000,)))
    np.testing.assert_allclose(student_draws.mean(0), teacher_draws.mean(0), atol=0.05)
    np.testing.assert_allclose(np.cov(student_draws.T), np.cov(teacher_draws.T), atol=0.1)


def test_conditional_flows_are_distilled_over_the_given_contexts():
    teacher = flows.maf(2, layers=2, hidden=(16,), context_dim=1)
    teacher_params = perturbed_params(teacher, jax.random.key(0), 0.3)
    student = flows.iaf(2, layers=2, hidden=(16,), context_dim=1)
    contexts = jnp.linspace(-1.0, 1.0, 32)[:, None]
    params, history = distill.fit(jax.random.key(2), student, student.init(jax.random.key(1)), teacher,
                                  teacher_params, contexts=contexts, num_steps=300, optimizer=optax.adam(3e-3),
                                  progress=False)
    assert history["loss"][-50:].mean() < 0.2 * history["loss"][:10].mean()
    for context in (-1.0, 1.0):  # the KL at either end of the range, estimated on its own
        context = jnp.full((4000, 1), context)
        kl = distill.loss(params, student, teacher, teacher_params, jax.random.key(5), 4000, context)
        assert float(kl) < 0.1


def _teacher_traces(num_chunks):
    """How often distill.fit traces the teacher's inverse in `num_chunks` chunks of 10 steps."""
    counter = []
    teacher = gaussian_teacher()

    def counting_inverse(params, y, context=None, inverse=teacher.bijector.inverse):
        counter.append(1)
        return inverse(params, y, context)

    teacher = teacher._replace(bijector=teacher.bijector._replace(inverse=counting_inverse))
    student = gaussian_student()
    distill.fit(jax.random.key(0), student, student.init(jax.random.key(0)), teacher, TEACHER_PARAMS,
                num_steps=10 * num_chunks, chunk_size=10, num_samples=8, progress=False)
    return len(counter)


def test_more_chunks_do_not_mean_more_compilations():
    assert _teacher_traces(2) == _teacher_traces(5) > 0


@pytest.mark.parametrize(
    "student, teacher, contexts, message",
    [
        (flows.iaf(3, layers=1, hidden=(4,)), flows.maf(2, layers=1, hidden=(4,)), None, "same events"),
        (flows.iaf(2, layers=1, hidden=(4,), context_dim=1), flows.maf(2, layers=1, hidden=(4,)), None, "same context"),
        (flows.iaf(2, layers=1, hidden=(4,)), flows.maf(2, layers=1, hidden=(4,)), jnp.zeros((4, 1)), "unconditional"),
        (flows.iaf(2, layers=1, hidden=(4,), context_dim=1), flows.maf(2, layers=1, hidden=(4,), context_dim=1),
         None, "pass contexts"),
        (flows.iaf(2, layers=1, hidden=(4,), context_dim=1), flows.maf(2, layers=1, hidden=(4,), context_dim=1),
         jnp.zeros((4, 2)), r"shape \('num_contexts', 1\)"),
        (flows.iaf(2, layers=1, hidden=(4,), context_dim=1), flows.maf(2, layers=1, hidden=(4,), context_dim=1),
         jnp.zeros((4, 1), jnp.int32), "float"),
        (flows.iaf(2, layers=1, hidden=(4,), context_dim=1), flows.maf(2, layers=1, hidden=(4,), context_dim=1),
         jnp.zeros((4, 1)).at[2].set(jnp.nan), r"contexts: 1 of 4 rows contain NaN or inf \(the first is row 2\)"),
    ],
    ids=["event", "context", "unexpected-contexts", "missing-contexts", "contexts-shape", "contexts-dtype",
         "contexts-nan"],
)
def test_mismatched_flows_and_contexts_are_refused(student, teacher, contexts, message):
    with pytest.raises(ValueError, match=message):
        distill.fit(jax.random.key(0), student, student.init(jax.random.key(0)), teacher,
                    teacher.init(jax.random.key(1)), contexts=contexts, num_steps=1, progress=False)


def test_loss_needs_samples():
    with pytest.raises(ValueError, match="num_samples"):
        distill.loss(STUDENT_PARAMS, gaussian_student(), gaussian_teacher(), TEACHER_PARAMS, jax.random.key(0), 0)
