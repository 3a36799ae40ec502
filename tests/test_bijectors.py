"""The generic contract, run by the public kit on every registered bijector, in float32 and float64."""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import jaxflow.testing.cases
from jaxflow import bijectors as jb
from jaxflow.testing import CASES, check_bijector, tolerances_for

NAMES = sorted(CASES)


def run_case(name, seed, param_scale=0.3, input_scale=1.0):
    bijector, params, x, context = CASES[name](jax.random.key(seed), param_scale=param_scale, input_scale=input_scale)
    check_bijector(bijector, params, x, context, **tolerances_for(name, x.dtype))
    return x


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    x = run_case(name, seed=0)
    assert x.dtype == jnp.float32


# One test per case in float64, its first example the float32 test's: the kit's program, keyed on
# the bijector, then compiles once for all of them (a second float64 test of the same case may run
# in another xdist worker and compile it again).
@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
@example(seed=0, param_scale=0.3, input_scale=1.0)
@given(
    seed=st.integers(0, 2**31 - 1),
    param_scale=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    input_scale=st.sampled_from([1e-3, 0.3, 1.0, 2.5]),
)
def test_contract_random_inputs_and_params(name, seed, param_scale, input_scale):
    x = run_case(name, seed, param_scale, input_scale)
    assert x.dtype == jnp.float64


@pytest.mark.parametrize("name", [n for n in NAMES if "conditional" in n])
def test_conditional_cases_depend_on_their_context(name):
    """Both directions move with the context (the kit checks each context alone)."""
    bijector, params, x, context = CASES[name](jax.random.key(0))
    key = jax.random.key(1)
    for direction in ("forward", "inverse"):
        here, there = (jb.transform(bijector, direction, params, x, c, key) for c in (context, context + 1.0))
        moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(here, there))
        assert moved > 1e-3, f"{name}.{direction} ignores its context (largest change {moved:.2g})"


@pytest.mark.parametrize("name", NAMES)
def test_init_gives_float_leaves_and_is_deterministic(name):
    bijector = CASES[name](jax.random.key(0))[0]
    first, second = bijector.init(jax.random.key(3)), bijector.init(jax.random.key(3))
    for leaf in jax.tree.leaves(first):
        assert jnp.issubdtype(jnp.result_type(leaf), jnp.floating), f"{name}: non-float params leaf {leaf.dtype}"
    jax.tree.map(np.testing.assert_array_equal, first, second)


@pytest.mark.float64
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("event_dtype, params_dtype", [(jnp.float32, jnp.float64), (jnp.float64, jnp.float32)])
def test_outputs_keep_the_event_dtype_whatever_the_params_dtype(name, event_dtype, params_dtype):
    """Float32 data under jax_enable_x64 (float64 params) stays float32, as a scan over layers needs."""
    bijector, params, x, context = CASES[name](jax.random.key(0))
    params = jax.tree.map(lambda leaf: leaf.astype(params_dtype), params)
    x, context = jax.tree.map(lambda a: a.astype(event_dtype), (x, context))
    key = jax.random.key(1) if bijector.stochastic else None
    y = x
    for direction in ("forward", "inverse"):  # shapes and dtypes only: traced, not compiled
        out = jax.eval_shape(functools.partial(jb.transform, bijector, direction, key=key), params, y, context)
        assert (out[0].dtype, out[1].dtype) == (event_dtype, event_dtype), f"{name}.{direction}: {out}"
        y = jax.ShapeDtypeStruct(out[0].shape, event_dtype)


# Cases built from layers whose fresh params are the identity (zero-initialised conditioners).
IDENTITY_AT_INIT = [
    n for n in NAMES
    if not n.startswith("from_distrax_")
    and any(s in n for s in (
        "coupling", "affine_diagonal", "shift", "scale", "lu_linear", "actnorm", "maf", "iaf", "autoregressive",
        "spline",
    ))
    # Not stacks and flows (they reorder between layers), nor multiscale (a float64-only test in test_image.py).
    and not any(s in n for s in ("stack", "flow", "multiscale"))
]


@pytest.mark.parametrize("name", IDENTITY_AT_INIT)
def test_fresh_params_are_the_identity(name):
    bijector, _, x, context = CASES[name](jax.random.key(1))
    params = bijector.init(jax.random.key(2))
    y, log_det = bijector.forward(params, x, context)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)


def test_kit_detects_a_wrong_log_det():
    honest = jb.scale(3)

    def forward(params, x, context=None):
        y, log_det = honest.forward(params, x, context)
        return y, 0.5 * log_det  # wrong by a factor of two

    liar = honest._replace(forward=forward, name="liar")
    params = {"log_scale": jnp.array([0.3, -0.2, 0.5])}
    with pytest.raises(AssertionError, match="log_det"):
        check_bijector(liar, params, jnp.ones(3))

    # Off by a constant in both directions, consistently: only the comparison with slogdet(jacfwd) sees it.
    def shifted(direction, sign):
        def apply(params, x, context=None):
            y, log_det = direction(params, x, context)
            return y, log_det + sign

        return apply

    consistent_liar = honest._replace(forward=shifted(honest.forward, 1.0), inverse=shifted(honest.inverse, -1.0))
    with pytest.raises(AssertionError, match=r"forward log_det vs slogdet\(jacfwd\)"):
        check_bijector(consistent_liar, params, jnp.ones(3))
    check_bijector(consistent_liar, params, jnp.ones(3), check_jacobian=False)  # the cancellation checks pass it


def test_kit_refuses_a_singular_reference_jacobian():
    # A forward whose derivative rule drops the tangent gives slogdet = -inf: the comparison read NaN > tol as
    # a pass, so any log-det passed in float32.
    @jax.custom_jvp
    def scaled(x, log_scale):
        return x * jnp.exp(log_scale)

    scaled.defjvp(lambda primals, tangents: (scaled(*primals), jnp.zeros_like(primals[0])))
    honest = jb.scale(3)
    tangentless = honest._replace(
        forward=lambda params, x, context=None: (scaled(x, params["log_scale"]), jnp.sum(params["log_scale"])),
        name="tangentless",
    )
    with pytest.raises(AssertionError, match="the reference is not finite"):
        check_bijector(tangentless, {"log_scale": jnp.array([0.3, -0.2, 0.5])}, jnp.ones(3))


def test_kit_needs_a_scalar_inverse_log_det():
    honest = jb.scale(3)

    def inverse(params, y, context=None):
        x, log_det = honest.inverse(params, y, context)
        return x, log_det[None]  # shape (1,): was a TypeError from jax.grad inside the kit

    with pytest.raises(AssertionError, match=r"inverse: log_det must be a scalar, got shape \(1,\)"):
        check_bijector(honest._replace(inverse=inverse), {"log_scale": jnp.array([0.3, -0.2, 0.5])}, jnp.ones(3))


def test_kit_detects_a_wrong_inverse():
    honest = jb.shift(2)
    wrong = honest._replace(inverse=lambda p, y, context=None: (y, jnp.zeros(())), name="wrong")
    with pytest.raises(AssertionError, match=r"inverse\(forward\(x\)\)"):
        check_bijector(wrong, {"shift": jnp.array([1.0, 2.0])}, jnp.zeros(2))


@pytest.mark.float64
def test_kit_detects_an_inverse_that_changes_the_dtype():
    honest = jb.shift(2)

    def inverse(params, y, context=None):
        x, log_det = honest.inverse(params, y, context)
        return x.astype(jnp.float32), log_det  # float64 events come back as float32

    lossy = honest._replace(inverse=inverse, name="lossy")
    with pytest.raises(AssertionError, match="inverse x float32"):
        check_bijector(lossy, {"shift": jnp.array([1.0, 2.0])}, jnp.zeros(2, jnp.float64))


@pytest.mark.float64
def test_kit_detects_an_inverse_that_differs_under_jit():
    honest = jb.shift(2)

    def inverse(params, y, context=None):
        x, log_det = honest.inverse(params, y, context)
        return (x if isinstance(y, jax.core.Tracer) else x + 1.0), log_det  # wrong when called eagerly

    two_faced = honest._replace(inverse=inverse, name="two_faced")
    with pytest.raises(AssertionError, match="eager inverse"):
        check_bijector(two_faced, {"shift": jnp.array([1.0, 2.0])}, jnp.zeros(2, jnp.float64))


@pytest.mark.float64
def test_kit_detects_a_wrong_custom_derivative():
    """A log-det whose derivative is 1% off passes every check but the float64 central differences."""

    @jax.custom_jvp
    def log_slope(x):  # log of the cubic's derivative 3x^2 + 1
        return jnp.log(3 * x**2 + 1)

    log_slope.defjvp(lambda primals, tangents: (
        log_slope(primals[0]), 1.01 * 6 * primals[0] / (3 * primals[0] ** 2 + 1) * tangents[0]
    ))

    def forward(params, x, context=None):
        return x**3 + x, jnp.sum(log_slope(x))

    def inverse(params, y, context=None):  # Newton's method on the increasing cubic
        x = jax.lax.fori_loop(0, 60, lambda _, x: x - (x**3 + x - y) / (3 * x**2 + 1), y / (1 + jnp.abs(y)) ** (2 / 3))
        return x, -jnp.sum(log_slope(x))

    skewed = jb.Bijector(lambda key: (), forward, inverse, "skewed_cubic")
    x = jnp.array([0.3, -1.2], jnp.float64)
    with pytest.raises(AssertionError, match="forward gradient vs central differences"):
        check_bijector(skewed, (), x)
    check_bijector(skewed, (), x.astype(jnp.float32))  # float32 has no central-difference check


def test_affine_params_map_x_to_loc_plus_scale_times_x():
    loc, scale = np.array([1.0, -2.0, 0.5]), np.array([0.5, 3.0, 1.0])
    x = jnp.array([0.3, -1.0, 2.0])
    y, log_det = jb.affine(3).forward(jb.affine_params(loc, scale), x)
    np.testing.assert_allclose(y, loc + scale * np.asarray(x), rtol=1e-6)
    np.testing.assert_allclose(log_det, np.sum(np.log(scale)), rtol=1e-6)


@pytest.mark.parametrize(
    "loc, scale, message",
    [
        ([0.0, 0.0], [1.0, 0.0], "scale must be finite and positive"),
        ([0.0, 0.0], [1.0, np.inf], "scale must be finite and positive"),
        ([0.0, 0.0], [1.0], r"loc and scale need one shape, got \(2,\) and \(1,\)"),
    ],
)
def test_affine_params_refuse_a_scale_that_is_no_scale(loc, scale, message):
    with pytest.raises(ValueError, match=message):
        jb.affine_params(loc, scale)


def test_every_case_module_is_imported_so_its_cases_register():
    package = Path(jaxflow.testing.cases.__file__).parent
    families = sorted(path.stem for path in package.glob("*.py") if not path.stem.startswith("_"))
    missing = [name for name in families if f"jaxflow.testing.cases.{name}" not in sys.modules]
    assert not missing, f"jaxflow/testing/cases/__init__.py does not import {missing}"
