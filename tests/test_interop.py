"""jaxflow <-> distrax adapters: numbers agree both ways, and distrax's own bijectors are an oracle."""

import functools

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorflow_probability.substrates import jax as tfp

import jaxflow as jf
from jaxflow import bijectors as jb
from jaxflow.interop import (
    from_distrax_bijector,
    from_distrax_distribution,
    to_distrax_bijector,
    to_distrax_distribution,
)
from jaxflow.testing import perturbed_params

DIM = 4
RTOL = {"float32": 2e-5, "float64": 1e-12}


def _close(actual, expected, rtol=2e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=rtol)


@functools.cache
def _jaxflow_bijector(name):
    return {
        "affine_coupling": lambda: jb.affine_coupling(DIM, hidden=(8,)),
        "stack": lambda: jb.stack(jb.chain(jb.affine_coupling(DIM, hidden=(8,)), jb.reverse()), 3),
        "conditional_coupling": lambda: jb.affine_coupling(DIM, hidden=(8,), context_dim=2),
    }[name]()


@functools.cache
def _perturbed_params(name):
    """Params of `_jaxflow_bijector(name)` moved off the identity (cached: Flax init is slow to trace)."""
    bijector = _jaxflow_bijector(name)
    return jax.jit(lambda key: perturbed_params(bijector, key, 0.3))(jax.random.key(0))


def _normal(seed, shape):
    """N(0, 1) inputs in the default float dtype, drawn with numpy (no compilation per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.result_type(float))


def _per_event(fn, xs, *args):
    """Applies a one-event function `fn(*args, x)` row by row (jitted, no vmap) and restacks the results."""
    fn = jax.jit(fn)
    rows = [fn(*args, row) for row in xs.reshape(-1, DIM)]
    batch = xs.shape[:-1]
    return jnp.stack([r[0] for r in rows]).reshape(xs.shape), jnp.stack([r[1] for r in rows]).reshape(batch)


# distrax objects are pytrees, so one compiled function serves every test (and checks that they trace).
@jax.jit
def _forward_and_log_det(distrax_bijector, x):
    return distrax_bijector.forward_and_log_det(x)


@jax.jit
def _inverse_and_log_det(distrax_bijector, y):
    return distrax_bijector.inverse_and_log_det(y)


@jax.jit
def _log_prob(distribution, x):
    return distribution.log_prob(x)


@functools.partial(jax.jit, static_argnames=("bijector", "direction"))
def _jaxflow_batch(bijector, direction, params, xs):
    """A jaxflow bijector over a batch of events (jaxflow bijectors are hashable values)."""
    return jax.vmap(getattr(bijector, direction), in_axes=(None, 0))(params, xs)


# jaxflow -> distrax bijectors


@pytest.mark.parametrize("name", ["affine_coupling", "stack"])
@pytest.mark.parametrize("batch_shape", [(), (2, 3)])
def test_to_distrax_bijector_matches_jaxflow_on_any_batch_shape(name, batch_shape):
    bijector, params = _jaxflow_bijector(name), _perturbed_params(name)
    wrapped = to_distrax_bijector(bijector, params, event_shape=(DIM,))
    assert wrapped.event_ndims_in == wrapped.event_ndims_out == 1
    x = _normal(1, (*batch_shape, DIM))

    y, log_det = _forward_and_log_det(wrapped, x)
    assert y.shape == x.shape and log_det.shape == batch_shape
    jax.tree.map(_close, (y, log_det), _per_event(bijector.forward, x, params))

    x_back, inverse_log_det = _inverse_and_log_det(wrapped, y)
    _close(x_back, x, 1e-4)
    _close(inverse_log_det, _per_event(bijector.inverse, y, params)[1])


@pytest.mark.parametrize("name", ["affine_coupling", "stack"])
def test_distrax_transformed_of_wrapped_bijector_equals_jaxflow_flow(name):
    bijector, params = _jaxflow_bijector(name), _perturbed_params(name)
    flow = jf.Flow(jf.standard_normal(DIM), bijector)
    transformed = distrax.Transformed(
        distrax.MultivariateNormalDiag(jnp.zeros(DIM)), to_distrax_bijector(bijector, params, event_shape=(DIM,))
    )
    x = 1.5 * _normal(2, (3, 5, DIM))
    _close(_log_prob(transformed, x), jax.jit(flow.log_prob)({"base": (), "bijector": params}, x))

    samples, log_q = jax.jit(transformed.sample_and_log_prob, static_argnames="sample_shape")(
        seed=jax.random.key(3), sample_shape=(7,)
    )
    assert samples.shape == (7, DIM)
    _close(_log_prob(transformed, samples), log_q, 1e-4)  # the inverse pass agrees with the forward pass


def test_wrapped_bijector_works_eagerly_and_under_grad():
    bijector, params = _jaxflow_bijector("stack"), _perturbed_params("stack")
    x = _normal(4, (6, DIM))
    wrapped = to_distrax_bijector(bijector, params, event_shape=(DIM,))
    _close(wrapped.forward(x), _forward_and_log_det(wrapped, x)[0])

    base = distrax.MultivariateNormalDiag(jnp.zeros(DIM))

    def distrax_loss(p):
        return -jnp.mean(distrax.Transformed(base, to_distrax_bijector(bijector, p, event_shape=(DIM,))).log_prob(x))

    flow = jf.Flow(jf.standard_normal(DIM), bijector)

    def jaxflow_loss(p):
        return -jnp.mean(flow.log_prob({"base": (), "bijector": p}, x))

    gradients = jax.jit(jax.grad(distrax_loss))(params), jax.jit(jax.grad(jaxflow_loss))(params)
    jax.tree.map(lambda a, b: _close(a, b, 1e-4), *gradients)


def test_wrapped_bijector_composes_with_distrax_chain_and_inverse():
    bijector, params = _jaxflow_bijector("affine_coupling"), _perturbed_params("affine_coupling")
    wrapped = to_distrax_bijector(bijector, params, event_shape=(DIM,))
    x = _normal(5, (3, DIM))

    # distrax.Chain applies its last member first: tanh(coupling(x)).
    chained = distrax.Chain([distrax.Block(distrax.Tanh(), 1), wrapped])
    expected = _per_event(jb.chain(bijector, jb.tanh()).forward, x, (params, ()))
    jax.tree.map(_close, _forward_and_log_det(chained, x), expected)
    jax.tree.map(_close, _forward_and_log_det(distrax.Inverse(wrapped), x), _per_event(bijector.inverse, x, params))


def test_conditional_bijector_and_flow_take_a_shared_context():
    bijector, params = _jaxflow_bijector("conditional_coupling"), _perturbed_params("conditional_coupling")
    context = jnp.array([0.7, -1.2])
    x = _normal(6, (5, DIM))
    wrapped = to_distrax_bijector(bijector, params, event_shape=(DIM,), context=context)
    expected = _per_event(lambda p, v: bijector.forward(p, v, context), x, params)
    jax.tree.map(_close, _forward_and_log_det(wrapped, x), expected)

    flow = jf.Flow(jf.standard_normal(DIM), bijector, context_shape=(2,))
    flow_params = {"base": (), "bijector": params}
    dist = to_distrax_distribution(flow, flow_params, context=context)
    _close(_log_prob(dist, x), jax.jit(flow.log_prob)(flow_params, x, context))


def test_to_distrax_bijector_rejects_wrong_event_shapes():
    bijector = _jaxflow_bijector("affine_coupling")
    wrapped = to_distrax_bijector(bijector, bijector.init(jax.random.key(0)), event_shape=(DIM,))
    with pytest.raises(ValueError, match=r"trailing event shape \(4,\).*got shape \(5, 3\)"):
        wrapped.forward(jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"trailing event shape \(4,\).*got shape \(\)"):
        wrapped.inverse(jnp.zeros(()))


def _noisy_identity():
    """A toy stochastic bijector: the identity, with N(0, 1) noise from its key as the log-det "estimate"."""

    def forward(params, x, context=None, *, key):
        del params, context
        return x, jax.random.normal(key, (), x.dtype)

    def inverse(params, y, context=None, *, key):
        del params, context
        return y, -jax.random.normal(key, (), y.dtype)

    return jb.Bijector(lambda key: (), forward, inverse, "noisy_identity", stochastic=True)


def test_stochastic_bijectors_get_one_key_per_event():
    bijector, key = _noisy_identity(), jax.random.key(25)
    x = _normal(25, (2, 3, DIM))
    wrapped = to_distrax_bijector(bijector, (), event_shape=(DIM,), key=key)
    y, log_det = wrapped.forward_and_log_det(x)
    _close(y, x)
    assert log_det.shape == (2, 3) and len(np.unique(np.asarray(log_det))) == 6  # independent draws
    _close(_forward_and_log_det(wrapped, x)[1], log_det)  # and reproducible from the key
    with pytest.raises(ValueError, match=r"stochastically: pass key=\.\.\. to to_distrax_bijector"):
        to_distrax_bijector(bijector, (), event_shape=(DIM,)).forward(x)

    flow = jf.Flow(jf.standard_normal(DIM), bijector)
    params = flow.init(key)
    _close(to_distrax_distribution(flow, params, key=key).log_prob(x), flow.log_prob(params, x, key=key))
    with pytest.raises(ValueError, match=r"stochastically: pass key=\.\.\. to to_distrax_distribution"):
        to_distrax_distribution(flow, params).log_prob(x)
    assert to_distrax_distribution(flow, params).sample(seed=key, sample_shape=2).shape == (2, DIM)  # needs no key


# jaxflow -> distrax distributions


def _flow_and_params():
    base = jf.diagonal_normal(DIM)
    base_params = perturbed_params(base, jax.random.key(7), 0.3)
    return jf.Flow(base, _jaxflow_bijector("stack")), {"base": base_params, "bijector": _perturbed_params("stack")}


def test_to_distrax_distribution_log_prob_and_shapes():
    flow, params = _flow_and_params()
    dist = to_distrax_distribution(flow, params)
    assert dist.event_shape == (DIM,) and dist.batch_shape == () and dist.dtype == jnp.float32
    x = _normal(8, (2, 3, DIM))
    _close(_log_prob(dist, x), jax.jit(flow.log_prob)(params, x))


def test_to_distrax_distribution_samples_with_a_seed():
    flow, params = _flow_and_params()
    dist = to_distrax_distribution(flow, params)
    key = jax.random.key(9)
    samples, log_q = jax.jit(dist.sample_and_log_prob, static_argnames="sample_shape")(seed=key, sample_shape=(2, 3))
    assert samples.shape == (2, 3, DIM) and log_q.shape == (2, 3)
    _close(samples, jax.jit(flow.sample, static_argnums=2)(params, key, (6,)).reshape(2, 3, DIM))
    _close(jax.jit(dist.sample, static_argnames="sample_shape")(seed=key, sample_shape=(2, 3)), samples)
    _close(log_q, _log_prob(dist, samples), 1e-4)  # forward-pass log q equals the inverse pass
    assert dist.sample(seed=0).shape == (DIM,)  # distrax's integer seeds work too


# distrax -> jaxflow bijectors


def _distrax_masked_coupling():
    w_shift, w_log_scale = 0.6 * _normal(10, (DIM, DIM)), 0.6 * _normal(11, (DIM, DIM))

    def conditioner(masked_x):
        return jnp.sin(masked_x @ w_shift), 0.5 * jnp.cos(masked_x @ w_log_scale)

    return distrax.MaskedCoupling(
        mask=np.array([False, True, True, False]),
        conditioner=conditioner,
        bijector=lambda theta: distrax.ScalarAffine(shift=theta[0], log_scale=theta[1]),
    )


DISTRAX_BIJECTORS = {
    "tanh_vector": (lambda: distrax.Tanh(), (DIM,)),
    "tanh_matrix": (lambda: distrax.Tanh(), (2, 3)),
    "block_tanh_matrix": (lambda: distrax.Block(distrax.Tanh(), 1), (3, DIM)),
    "scalar_affine": (
        lambda: distrax.ScalarAffine(shift=jnp.arange(DIM) - 1.0, scale=jnp.array([0.5, 2.0, -1.5, 1.0])),
        (DIM,),
    ),
    "scalar_affine_shared": (lambda: distrax.ScalarAffine(shift=0.3, scale=1.7), (DIM,)),
    "doubling_with_scalar_log_det": (  # one log-det for the whole batch: it counts once per element
        lambda: distrax.Lambda(
            lambda x: 2.0 * x, lambda y: 0.5 * y, lambda x: jnp.log(2.0), lambda y: -jnp.log(2.0), event_ndims_in=0
        ),
        (DIM,),
    ),
    "masked_coupling": (_distrax_masked_coupling, (DIM,)),
}


@pytest.mark.parametrize("name", sorted(DISTRAX_BIJECTORS))
def test_from_distrax_bijector_matches_distrax(name):
    make, event_shape = DISTRAX_BIJECTORS[name]
    original = make()
    wrapped = from_distrax_bijector(original, event_shape)
    assert wrapped.init(jax.random.key(0)) == ()
    x = _normal(12, (5, *event_shape))

    y, log_det = _jaxflow_batch(wrapped, "forward", (), x)
    expected_y, expected_log_det = _forward_and_log_det(original, x)
    _close(y, expected_y)
    # distrax leaves log-dets per element for the axes it treats as batch; jaxflow sums them per event.
    per_element_shape = x.shape[: 1 + len(event_shape) - original.event_ndims_in]
    _close(log_det, jnp.broadcast_to(expected_log_det, per_element_shape).reshape(5, -1).sum(1))

    x_back, inverse_log_det = _jaxflow_batch(wrapped, "inverse", (), y)
    _close(x_back, x, 1e-4)
    _close(inverse_log_det, -log_det, 1e-4)


def test_from_distrax_bijector_errors():
    wrapped = from_distrax_bijector(distrax.Tanh(), (DIM,))
    with pytest.raises(ValueError, match=r"expected one event of shape \(4,\).*got shape \(2, 4\)"):
        wrapped.forward((), jnp.zeros((2, DIM)))
    with pytest.raises(TypeError, match="floating-point"):
        wrapped.inverse((), jnp.zeros(DIM, jnp.int32))
    with pytest.raises(ValueError, match="acts on 2-d events"):
        from_distrax_bijector(distrax.Block(distrax.Tanh(), 2), (DIM,))
    with pytest.raises(ValueError, match="maps 1-d events to 0-d events"):
        summing = distrax.Lambda(jnp.sum, forward_log_det_jacobian=jnp.zeros_like, event_ndims_in=1, event_ndims_out=0)
        from_distrax_bijector(summing, (DIM,))
    batched = from_distrax_bijector(distrax.ScalarAffine(shift=jnp.zeros((3, DIM))), (DIM,))
    with pytest.raises(ValueError, match=r"to shape \(3, 4\)"):
        batched.forward((), jnp.zeros(DIM))


# distrax -> jaxflow distributions (fixed bases)


def test_flow_with_a_distrax_base_equals_distrax_transformed():
    logistic = distrax.Logistic(jnp.array([0.2, -0.4, 0.0, 1.0]), jnp.array([1.0, 0.5, 2.0, 1.5]))
    logistic = distrax.Independent(logistic, reinterpreted_batch_ndims=1)
    coupling = _distrax_masked_coupling()
    flow = jf.Flow(from_distrax_distribution(logistic), from_distrax_bijector(coupling, (DIM,)))
    params = flow.init(jax.random.key(0))
    x = 2.0 * _normal(13, (3, 4, DIM))
    reference = distrax.Transformed(logistic, coupling)
    _close(jax.jit(flow.log_prob)(params, x), _log_prob(reference, x))

    samples, log_q = jax.jit(flow.sample_and_log_prob, static_argnums=2)(params, jax.random.key(14), (6,))
    assert samples.shape == (6, DIM)
    _close(log_q, _log_prob(reference, samples), 1e-4)


def test_jaxflow_bijector_over_a_distrax_base_both_ways():
    mvn = distrax.MultivariateNormalDiag(jnp.array([1.0, -1.0, 0.5, 0.0]), jnp.array([0.5, 2.0, 1.0, 1.5]))
    bijector, params = _jaxflow_bijector("stack"), _perturbed_params("stack")
    flow = jf.Flow(from_distrax_distribution(mvn), bijector)
    x = _normal(15, (7, DIM))
    reference = distrax.Transformed(mvn, to_distrax_bijector(bijector, params, event_shape=(DIM,)))
    _close(jax.jit(flow.log_prob)({"base": (), "bijector": params}, x), _log_prob(reference, x))


def test_from_distrax_distribution_sums_batch_axes_into_the_event():
    loc, scale = jnp.array([0.3, -0.2, 1.0, 0.0]), jnp.array([1.0, 0.7, 1.3, 2.0])
    elementwise = from_distrax_distribution(distrax.Normal(loc, scale))
    multivariate = from_distrax_distribution(distrax.MultivariateNormalDiag(loc, scale))
    assert elementwise.event_shape == multivariate.event_shape == (DIM,)
    x = _normal(16, (DIM,))
    _close(elementwise.log_prob((), x), multivariate.log_prob((), x))
    assert elementwise.sample((), jax.random.key(17)).shape == (DIM,)
    with pytest.raises(ValueError, match=r"expected one event of shape \(4,\)"):
        elementwise.log_prob((), jnp.zeros(3))
    joint = distrax.Joint({"a": distrax.Normal(0.0, 1.0)})
    with pytest.raises(TypeError, match="nested events"):
        from_distrax_distribution(joint)


# Where distrax (or TFP, through distrax) has the same map, the numbers agree.


SAME_BIJECTORS = {  # jaxflow factory, distrax reference, map from N(0, 1) noise into the domain
    "tanh": (jb.tanh, distrax.Tanh, lambda v: v),
    "sigmoid": (jb.sigmoid, distrax.Sigmoid, lambda v: v),
    "logit": (jb.logit, lambda: distrax.Inverse(distrax.Sigmoid()), jax.nn.sigmoid),
    "exp": (jb.exp, lambda: distrax.Lambda(jnp.exp), lambda v: v),
    "softplus": (jb.softplus, tfp.bijectors.Softplus, lambda v: v),
}


@pytest.mark.parametrize("name", sorted(SAME_BIJECTORS))
def test_fixed_bijectors_agree_with_distrax(name, dtype):
    make_jaxflow, make_reference, into_domain = SAME_BIJECTORS[name]
    ours, reference = make_jaxflow(DIM), distrax.Block(make_reference(), 1)
    x = into_domain(_normal(18, (6, DIM)))
    close = functools.partial(_close, rtol=RTOL[dtype])
    y, log_det = _jaxflow_batch(ours, "forward", (), x)
    jax.tree.map(close, (y, log_det), _forward_and_log_det(reference, x))
    jax.tree.map(close, _jaxflow_batch(ours, "inverse", (), y), _inverse_and_log_det(reference, y))


def test_affine_agrees_with_distrax_scalar_affine(dtype):
    params = {"shift": _normal(19, (DIM,)), "log_scale": 0.5 * _normal(20, (DIM,))}
    reference = distrax.Block(distrax.ScalarAffine(shift=params["shift"], log_scale=params["log_scale"]), 1)
    x = _normal(21, (6, DIM))
    ours = jb.affine(DIM)
    close = functools.partial(_close, rtol=RTOL[dtype])
    jax.tree.map(close, _jaxflow_batch(ours, "forward", params, x), _forward_and_log_det(reference, x))
    jax.tree.map(close, _jaxflow_batch(ours, "inverse", params, x), _inverse_and_log_det(reference, x))


def test_normal_bases_agree_with_distrax(dtype):
    x = _normal(22, (6, DIM))
    standard = jax.vmap(jf.standard_normal(DIM).log_prob, in_axes=(None, 0))((), x)
    _close(standard, distrax.MultivariateNormalDiag(jnp.zeros(DIM)).log_prob(x), RTOL[dtype])

    params = {"loc": _normal(23, (DIM,)), "log_scale": 0.5 * _normal(24, (DIM,))}
    diagonal = jax.vmap(jf.diagonal_normal(DIM).log_prob, in_axes=(None, 0))(params, x)
    reference = distrax.MultivariateNormalDiag(params["loc"], jnp.exp(params["log_scale"]))
    _close(diagonal, reference.log_prob(x), RTOL[dtype])


def test_adapters_refuse_a_bijector_that_changes_the_event_shape():
    """numpyro reshaped squeeze's output into the input's layout without a word; distrax's inverse failed."""
    from jaxflow.interop.numpyro import BijectorTransform

    squeeze = jb.squeeze((4, 4, 1))
    message = r"squeeze maps events of shape \(4, 4, 1\) to shape \(2, 2, 4\); the adapter needs a bijector that keeps"
    with pytest.raises(ValueError, match="to_distrax_bijector: " + message):
        to_distrax_bijector(squeeze, (), event_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="BijectorTransform: " + message):
        BijectorTransform(squeeze, (), (4, 4, 1))


def test_to_distrax_distribution_refuses_a_batch_of_contexts():
    """Densities worked, then sampling failed naming a shape (1,) the user never passed."""
    flow = jf.Flow(jf.standard_normal(2), jb.affine_coupling(2, hidden=(4,), context_dim=3), (3,))
    with pytest.raises(ValueError, match=r"pass one context of shape \(3,\), shared by every sample, got a batch"):
        to_distrax_distribution(flow, flow.init(jax.random.key(0)), context=jnp.zeros((5, 3)))
